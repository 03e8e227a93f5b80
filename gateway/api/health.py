"""Liveness and readiness: the routes that need no key (load balancers and orchestrators probe them)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ..auth import public
from ..protocol.responses import Health, ReadinessReport
from ..services import services_of
from .openapi_schema import PUBLIC_ERRORS, errors

router = APIRouter(tags=["health"])


@router.get("/health", dependencies=[Depends(public)], response_model=Health, responses=errors(*PUBLIC_ERRORS))
async def health() -> dict[str, str]:
    """The gateway process is up and serving (dependencies are checked by readiness, not here)."""
    return {"status": "healthy", "service": "gateway", "timestamp": datetime.now(UTC).isoformat()}


@router.get(
    "/health/ready",
    dependencies=[Depends(public)],
    response_model=None,
    responses={
        200: {"model": ReadinessReport, "description": "Healthy or degraded."},
        503: {"model": ReadinessReport, "description": "Unhealthy: no model, or a critical dependency, is up."},
        **errors(*PUBLIC_ERRORS),
    },
)
async def ready(request: Request) -> Response:
    """Every dependency and replica (see gateway/readiness.py for the policy); 503 when unhealthy."""
    document: dict[str, Any] = await services_of(request.app).readiness.report()
    status = 503 if document["status"] == "unhealthy" else 200
    return Response(orjson.dumps(document), status_code=status, media_type="application/json")
