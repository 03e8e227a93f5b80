""".env.example documents every setting the gateway reads (by its CITADEL_ name or one of its aliases)."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.settings import Settings

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"


def names_of(field_name: str) -> list[str]:
    field = Settings.model_fields[field_name]
    alias = field.validation_alias
    choices = getattr(alias, "choices", [alias]) if alias is not None else []
    return [f"CITADEL_{field_name.upper()}", *(c for c in choices if isinstance(c, str))]


def test_every_setting_is_in_env_example() -> None:
    text = ENV_EXAMPLE.read_text()
    missing = [
        names_of(name)[0]
        for name in Settings.model_fields
        if not any(re.search(rf"(?m)^#?\s*{re.escape(n)}=", text) for n in names_of(name))
    ]
    assert not missing, f"add these to .env.example: {missing}"
