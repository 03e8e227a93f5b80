"""Shared fixtures: settings that never read the developer's .env, and free ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import Settings
from tests.support.catalogs import ADMIN_KEY
from tests.support.ports import free_port as free_port

# Real PostgreSQL and Redis for the tests that need them (local servers when DATABASE_URL / REDIS_URL are unset);
# after the session, the logs of the gateways the tests started must show no unhandled exception.
pytest_plugins = ["tests.support.postgres", "tests.support.redis", "tests.support.logscan"]


def make_settings(config_path: Path, **overrides: object) -> Settings:
    """Settings for a test: only what is passed here, never the environment's .env file.

    The audit spool defaults to a folder of the test's own: a shared one would be replayed into
    whatever database the next gateway uses.
    """
    overrides.setdefault("audit_spool_dir", config_path.parent / "audit-spool")
    overrides.setdefault("qdrant_path", config_path.parent / "qdrant")  # the embedded store locks its folder
    return Settings(_env_file=None, admin_key=ADMIN_KEY, config_path=config_path, **overrides)  # type: ignore[call-arg]


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}
