"""POST /admin/reload: apply config/models.yaml without a restart (gateway/reload.py; admin role only)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ..auth import Permission, require
from ..catalog import ConfigError
from ..errors import InvalidRequest
from ..protocol.admin import ConfigReload
from ..protocol.responses import ErrorResponse
from ..reload import ACTION, Reloader
from ..services import services_of
from ..upstream.replica import replica_label
from .deps import record_admin_action
from .openapi_schema import KEYED_ERRORS, errors

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require(Permission.ADMIN))],
    responses=errors(*KEYED_ERRORS, 403),
)

_REFUSED = {
    "model": ErrorResponse,
    "description": "The models file does not load or validate (code `invalid_config`; nothing changed), or the "
    "request is malformed.",
}


@router.post("/reload", responses={400: _REFUSED})
async def reload_config(request: Request) -> ConfigReload:
    """Read config/models.yaml again, validate it and apply it without dropping requests in flight: on this
    worker, then (with Redis) on every other one. See docs/configuration.md, "Live configuration"."""
    reloader: Reloader = services_of(request.app).reloader
    try:
        diff = await reloader.reload(trigger="admin")
    except ConfigError as exc:
        raise InvalidRequest(
            f"The models file was refused; the running configuration is kept. {exc}", code="invalid_config"
        ) from exc
    notified = await reloader.broadcast()
    record_admin_action(request, action=ACTION, target=diff.describe()[:128])
    return ConfigReload(
        models_added=list(diff.models_added),
        models_removed=list(diff.models_removed),
        models_changed={name: list(fields) for name, fields in diff.models_changed.items()},
        replicas_added=[replica_label(url) for url in diff.replicas_added],
        replicas_removed=[replica_label(url) for url in diff.replicas_removed],
        workers_notified=notified,
    )
