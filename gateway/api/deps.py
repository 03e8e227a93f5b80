"""Typed dependencies handed to the routes, and the admin-action audit helper."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request

from ..audit.record import AuditRecord
from ..catalog import Catalog


# Dependencies are async on purpose: FastAPI runs plain `def` dependencies in a thread pool.
async def get_catalog(request: Request) -> Catalog:
    return request.app.state.inference.catalog  # type: ignore[no-any-return]


CatalogDep = Annotated[Catalog, Depends(get_catalog)]


def record_admin_action(request: Request, *, action: str, target: str) -> None:
    """One audit row (kind 'admin') for an admin action, besides the request's own row."""
    state = request.scope["state"]
    principal = state["principal"]
    request.app.state.audit.record(
        AuditRecord(
            kind="admin",
            occurred_at=datetime.now(UTC),
            method=request.method,
            endpoint=request.url.path[:128],
            status=200,
            latency_ms=0.0,
            request_id=state.get("request_id"),
            key_id=principal.key_id,
            role=str(principal.role),
            action=action,
            target=target,
            client_addr=request.client.host if request.client else None,
        )
    )
