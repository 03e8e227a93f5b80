"""The status page for people without Grafana: GET /status (HTML) and GET /status/data (its JSON).

The page holds no data and needs no key; the data is for any key with models:read, or public when
CITADEL_STATUS_PAGE_PUBLIC=true. Its "batches" come from PostgreSQL at each poll (observability/batch_status.py):
ids and counts only, an admin's view all keys' batches, another key's its own, the public page only the count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ..auth import Permission, public, require
from ..context import context_of
from ..observability.batch_status import status_section
from ..services import services_of
from .status_page import HEADERS, HTML

STATUS_PATH = "/status"
STATUS_DATA_PATH = "/status/data"


def status_router(*, public_data: bool) -> APIRouter:
    data_guard: Callable[..., Any] = public if public_data else require(Permission.MODELS_READ)
    router = APIRouter(tags=["status"])

    @router.get(STATUS_PATH, dependencies=[Depends(public)], include_in_schema=False)
    async def status_page() -> Response:
        """The page (no data in it: its script fetches /status/data)."""
        return Response(HTML, media_type="text/html; charset=utf-8", headers=HEADERS)

    @router.get(STATUS_DATA_PATH, dependencies=[Depends(data_guard)], include_in_schema=False)
    async def status_data(request: Request) -> Response:
        """Per model: health, requests, p50/p95 against the target, tokens/s, error rate, cache hits, and the
        admission queue now (capacity, in flight, waiting per class, saturated); the batches running now."""
        services = services_of(request.app)
        data = services.status_board.data()
        batches = await status_section(services.db_sessions, context_of(request.scope).principal)
        data["batches"] = batches.as_json() if batches is not None else None
        body = orjson.dumps(data)
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    return router
