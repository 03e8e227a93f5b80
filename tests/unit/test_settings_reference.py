"""docs/settings.md is generated from the Settings class: the page and the code must agree."""

from __future__ import annotations

from pathlib import Path

from gateway.settings_reference import render, variables

PAGE = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_the_settings_page_matches_the_code() -> None:
    assert PAGE.read_text() == render(), (
        "docs/settings.md is stale: python -m gateway.settings_reference > docs/settings.md"
    )


def test_every_setting_is_on_the_page_with_its_variable() -> None:
    text = PAGE.read_text()
    for name in variables():
        assert f"`{name}`" in text, name
    assert "`CITADEL_REDIS_TIMEOUT_MS`" in text and "`CITADEL_RATE_LIMIT_ROLE_REQUESTS`" in text  # group members
    assert "`DATABASE_URL`" in text and "`API_GATEWAY_PORT`" in text  # aliases, not the prefixed names
