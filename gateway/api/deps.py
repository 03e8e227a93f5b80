"""Typed dependencies handed to the routes: long-lived services from the lifespan, and the bounded body."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request

from ..audit.record import AuditRecord
from ..catalog import Catalog
from ..errors import InvalidRequest, PayloadTooLarge


# Dependencies are async on purpose: FastAPI runs plain `def` dependencies in a thread pool.
async def get_catalog(request: Request) -> Catalog:
    return request.app.state.inference.catalog  # type: ignore[no-any-return]


CatalogDep = Annotated[Catalog, Depends(get_catalog)]


def request_id(request: Request) -> str:
    return request.scope["state"]["request_id"]  # type: ignore[no-any-return]


async def read_body(request: Request, *, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (never read whole first)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("The Content-Length header is not a number.")
        if int(declared) > limit:
            raise PayloadTooLarge(f"The request body is larger than this server's limit of {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than this server's limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


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
