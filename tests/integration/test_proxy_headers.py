"""X-Forwarded-For is believed only from the proxies CITADEL_TRUSTED_PROXIES names: by default no one, so a local
process cannot write any address it likes into the audit log (a real gateway process, a real PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.catalogs import ADMIN_KEY
from tests.support.gateway import gateway_env, running_gateway
from tests.support.postgres import fresh_database

FORGED = "203.0.113.9"  # TEST-NET-3: never a real client


async def audited_addresses(db_url: str) -> list[str]:
    engine = create_async_engine(db_url)
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT client_addr FROM llm.audit_log WHERE kind = 'api'"))).all()
    await engine.dispose()
    return [row[0] for row in rows]


@pytest.mark.parametrize(("trusted", "expected"), [("", "127.0.0.1"), ("127.0.0.1", FORGED)])
async def test_forwarded_for_is_believed_only_from_trusted_proxies(
    tmp_path: Path, postgres_url: str, trusted: str, expected: str
) -> None:
    async with fresh_database(postgres_url, prefix="proxies") as db_url:
        env = gateway_env(tmp_path, {}, DATABASE_URL=db_url, CITADEL_TRUSTED_PROXIES=trusted)
        with running_gateway(tmp_path, env) as gateway:
            headers = {"Authorization": f"Bearer {ADMIN_KEY}", "X-Forwarded-For": FORGED}
            async with httpx.AsyncClient(timeout=10) as client:
                assert (await client.get(f"{gateway.url}/v1/models", headers=headers)).status_code == 200
        # The gateway's graceful stop flushed the audit row.
        assert await audited_addresses(db_url) == [expected]
