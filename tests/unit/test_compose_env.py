"""`make up` fills the secrets compose requires in .env, and never changes one that is set."""

from __future__ import annotations

import stat
from pathlib import Path

from services.compose_env import SECRETS, fill, main


def test_missing_and_empty_secrets_get_values_and_set_ones_are_kept() -> None:
    text, filled = fill("CITADEL_ADMIN_KEY=keep-this-one-please\nPOSTGRES_PASSWORD=\nOTHER=1")
    assert filled == ["POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"]
    values = dict(line.split("=", 1) for line in text.splitlines())
    assert values["CITADEL_ADMIN_KEY"] == "keep-this-one-please" and values["OTHER"] == "1"
    assert len(values["POSTGRES_PASSWORD"]) >= 24 and len(values["GRAFANA_ADMIN_PASSWORD"]) >= 18
    again, filled_again = fill(text)
    assert again == text and filled_again == []


def test_env_is_made_from_the_example_and_private(tmp_path: Path) -> None:
    example = tmp_path / ".env.example"
    example.write_text("".join(f"{name}=\n" for name in SECRETS) + "API_GATEWAY_PORT=8000\n")
    env = tmp_path / ".env"
    main(env, example)
    assert "API_GATEWAY_PORT=8000" in env.read_text()
    assert all(f"{name}=\n" not in env.read_text() for name in SECRETS)
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
