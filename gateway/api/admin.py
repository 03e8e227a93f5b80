"""The admin API under /admin: keys, the audit log and usage (admin role only)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from ..aliases import known_model_names
from ..auth import Permission, PrincipalDep, require
from ..catalog import Catalog
from ..errors import InvalidRequest, NotFound
from ..protocol.admin import (
    AuditEntry,
    AuditPage,
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyOut,
    KeyUpdate,
    UsageReport,
)
from ..revocation import publish_revocation
from ..services import Services
from ..store import audit_queries
from ..store import keys as key_rows
from ..store.db import SessionDep
from .deps import CatalogDep, ServicesDep, record_admin_action
from .openapi_schema import KEYED_ERRORS, errors
from .usage import Window, usage_report

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require(Permission.ADMIN))],
    responses=errors(*KEYED_ERRORS, 403),
)

MAX_PAGE = 500


@router.post("/keys", status_code=201)
async def create_key(
    body: KeyCreate, request: Request, session: SessionDep, principal: PrincipalDep, catalog: CatalogDep
) -> KeyCreated:
    """Create a key; the answer carries its secret, which is never shown again."""
    _check_models(body.allowed_models, catalog)
    _check_expiry(body.expires_at)
    row, secret = await key_rows.create_key(session=session, created_by=principal.key_id, **body.model_dump())
    await session.commit()
    record_admin_action(request, action="keys.create", target=str(row.id))
    return KeyCreated(**KeyOut.of(row).model_dump(), key=secret)


@router.get("/keys")
async def list_keys(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    include_revoked: bool = False,
) -> KeyList:
    """Keys, newest first (prefixes only, never secrets)."""
    rows = await key_rows.list_keys(session=session, limit=limit, offset=offset, include_revoked=include_revoked)
    return KeyList(data=[KeyOut.of(row) for row in rows])


@router.get("/keys/{key_id}", responses=errors(404))
async def get_key(key_id: uuid.UUID, session: SessionDep) -> KeyOut:
    row = await key_rows.get_key(session=session, key_id=key_id)
    if row is None:
        raise NotFound(f"No key with id {key_id}.", param="key_id")
    return KeyOut.of(row)


@router.patch("/keys/{key_id}", responses=errors(404))
async def update_key(
    key_id: uuid.UUID,
    body: KeyUpdate,
    request: Request,
    session: SessionDep,
    services: ServicesDep,
    catalog: CatalogDep,
) -> KeyOut:
    """Change a key's name, models, limits, expiry, class or queue weight; only the fields sent change.
    Every worker uses the new values at once (through Redis; without it, within the key cache TTL)."""
    changes = body.changes()
    if not changes:
        raise InvalidRequest("Nothing to change: send at least one field.")
    _check_models(body.allowed_models, catalog)
    _check_expiry(body.expires_at)
    row = await key_rows.update_key(session=session, key_id=key_id, changes=changes)
    if row is None:
        raise NotFound(f"No key with id {key_id}.", param="key_id")
    await session.commit()
    await _forget_everywhere(services, key_id)
    record_admin_action(request, action="keys.update", target=str(key_id))
    return KeyOut.of(row)


@router.delete("/keys/{key_id}", responses=errors(404))
async def revoke_key(key_id: uuid.UUID, request: Request, session: SessionDep, services: ServicesDep) -> KeyOut:
    """Revoke a key (idempotent). Every worker forgets it at once (through Redis; without it, within the TTL)."""
    row = await key_rows.revoke_key(session=session, key_id=key_id)
    if row is None:
        raise NotFound(f"No key with id {key_id}.", param="key_id")
    await session.commit()
    await _forget_everywhere(services, key_id)
    record_admin_action(request, action="keys.revoke", target=str(key_id))
    return KeyOut.of(row)


def _check_models(allowed: list[str] | None, catalog: Catalog) -> None:
    """Every name of an allow-list is a model or an alias of the catalogue (400 naming the unknown ones)."""
    unknown = sorted(set(allowed or ()) - known_model_names(catalog))
    if unknown:
        raise InvalidRequest(f"Unknown models in 'allowed_models': {', '.join(unknown)[:200]}.", param="allowed_models")


def _check_expiry(expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise InvalidRequest("'expires_at' is in the past.", param="expires_at")


async def _forget_everywhere(services: Services, key_id: uuid.UUID) -> None:
    """Revoked or changed: this worker forgets its cached record now, and every other one through Redis (the
    revocation channel only makes a worker forget; its next request looks the key up again)."""
    services.key_store.forget(key_id)
    if services.redis is not None:
        # A failure is logged; the key cache TTL still bounds how long another worker keeps the old record.
        await publish_revocation(services.redis, key_id)


@router.get("/audit")
async def search_audit(
    session: SessionDep,
    window: Annotated[Window, Depends()],
    key_id: uuid.UUID | None = None,
    model: Annotated[str | None, Query(max_length=256)] = None,
    status: Annotated[int | None, Query(ge=100, le=599)] = None,
    kind: Annotated[str | None, Query(pattern="^(api|admin)$")] = None,
    before_id: Annotated[int | None, Query(ge=1)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> AuditPage:
    """Audit rows newest first; pass `next_before_id` back as `before_id` for the next page."""
    rows, has_more = await audit_queries.search_audit(
        session=session,
        since=window.since,
        until=window.until,
        key_id=key_id,
        model=model,
        status=status,
        kind=kind,
        before_id=before_id,
        limit=limit,
    )
    return AuditPage(
        data=[AuditEntry.of(row) for row in rows],
        has_more=has_more,
        next_before_id=rows[-1].id if has_more and rows else None,
    )


@router.get("/usage")
async def usage(
    session: SessionDep,
    window: Annotated[Window, Depends()],
    key_id: uuid.UUID | None = None,
    model: Annotated[str | None, Query(max_length=256)] = None,
) -> UsageReport:
    """Requests and tokens per key and model over a window (default: the last 24 hours)."""
    return await usage_report(session=session, window=window, key_id=key_id, model=model)
