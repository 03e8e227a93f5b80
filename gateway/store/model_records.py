"""Model metadata: the catalogue recorded in llm.models at start-up (and health, as it is learned)."""

from __future__ import annotations

from sqlalchemy import func, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from ..catalog import Catalog
from .models import ModelRecord


async def sync_models(*, session: AsyncSession, catalog: Catalog) -> None:
    """Insert or update one row per configured model; health columns are left as they are."""
    for spec in catalog.models.values():
        values = {
            "name": spec.name,
            "kind": spec.kind,
            "display_name": spec.display_name,
            "weights": spec.weights,
            "backends": spec.backends,
            "max_tokens": spec.max_tokens,
            "max_model_len": spec.max_model_len,
            "temperature": spec.temperature,
            "latency_target_ms": spec.latency_target_ms,
        }
        statement = insert(ModelRecord).values(**values, status="unknown")
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[ModelRecord.name], set_={**values, "updated_at": func.now()}
            )
        )
    await session.commit()


async def record_health(*, session: AsyncSession, healthy: dict[str, bool]) -> None:
    """Store each model's status; `last_seen_healthy_at` moves only when it answered."""
    for name, ok in healthy.items():
        values: dict[str, object] = {"status": "healthy" if ok else "unreachable", "updated_at": func.now()}
        if ok:
            values["last_seen_healthy_at"] = func.now()
        await session.execute(update(ModelRecord).where(ModelRecord.name == name).values(**values))
    await session.commit()
