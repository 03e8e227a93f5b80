"""Typed dependencies handed to the routes (the services, the catalogue), and the admin-action audit helper."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request

from ..audit.record import AuditRecord
from ..catalog import Catalog
from ..context import context_of
from ..services import Services, services_of


# Dependencies are async on purpose: FastAPI runs plain `def` dependencies in a thread pool.
async def get_services(request: Request) -> Services:
    return services_of(request.app)


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_catalog(request: Request) -> Catalog:
    return services_of(request.app).catalog


CatalogDep = Annotated[Catalog, Depends(get_catalog)]


def record_admin_action(request: Request, *, action: str, target: str) -> None:
    """One audit row (kind 'admin') for an admin action, besides the request's own row."""
    ctx = context_of(request.scope)
    principal = ctx.principal
    assert principal is not None  # admin routes are guarded
    services_of(request.app).audit.record(
        AuditRecord(
            kind="admin",
            occurred_at=datetime.now(UTC),
            method=request.method,
            endpoint=request.url.path[:128],
            status=200,
            latency_ms=0.0,
            request_id=ctx.request_id,
            key_id=principal.key_id,
            role=str(principal.role),
            action=action,
            target=target,
            client_addr=request.client.host if request.client else None,
        )
    )
