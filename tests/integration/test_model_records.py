"""Model metadata: the catalogue is recorded in llm.models at start-up, with each model's health."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.integration.conftest import DbGateway


async def test_models_are_recorded_with_limits_and_health(db_gateway: DbGateway, postgres_url: str) -> None:
    engine = create_async_engine(postgres_url)
    try:
        for _ in range(50):
            async with engine.connect() as conn:
                rows = {row["name"]: row for row in (await conn.execute(text("SELECT * FROM llm.models"))).mappings()}
            if rows.get("tiny") is not None and rows["tiny"]["status"] == "healthy":
                break
            await asyncio.sleep(0.05)
    finally:
        await engine.dispose()
    tiny = rows["tiny"]
    assert tiny["backends"] == [db_gateway.upstream_url]
    assert (tiny["max_tokens"], tiny["max_model_len"], tiny["temperature"]) == (64, 64, 0.7)
    assert tiny["status"] == "healthy" and tiny["last_seen_healthy_at"] is not None
