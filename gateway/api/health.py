"""Liveness: the one route that needs no key."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends

from ..auth import public

router = APIRouter(tags=["health"])


@router.get("/health", dependencies=[Depends(public)])
async def health() -> dict[str, str]:
    """The gateway process is up and serving (dependencies are checked by readiness, not here)."""
    return {"status": "healthy", "service": "gateway", "timestamp": datetime.now(UTC).isoformat()}
