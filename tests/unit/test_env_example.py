""".env.example documents every setting the gateway reads (by its CITADEL_ name or one of its aliases)."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.settings import GROUPS, Settings
from gateway.settings_reference import variable

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"


def names_of(field_name: str) -> list[str]:
    field = Settings.model_fields[field_name]
    alias = field.validation_alias
    choices = getattr(alias, "choices", [alias]) if alias is not None else []
    return [f"CITADEL_{field_name.upper()}", *(c for c in choices if isinstance(c, str))]


def documented(text: str, names: list[str]) -> bool:
    return any(re.search(rf"(?m)^#?\s*{re.escape(n)}=", text) for n in names)


def test_every_setting_is_in_env_example() -> None:
    text = ENV_EXAMPLE.read_text()
    # Top-level settings by their name or an alias; a group's members by their flat names
    # (CITADEL_REDIS_TIMEOUT_MS for settings.redis.timeout_ms).
    expected = [names_of(name) for name in Settings.model_fields if name not in GROUPS]
    expected += [[variable(member, group)] for group, model in GROUPS.items() for member in model.model_fields]
    missing = [names[0] for names in expected if not documented(text, names)]
    assert not missing, f"add these to .env.example: {missing}"
