"""The audit row of one API request, built from its RequestContext by the request layer (gateway/middleware.py)."""

from __future__ import annotations

from datetime import datetime

from starlette.types import Scope

from ..context import RequestContext
from .record import AuditRecord


def api_record(scope: Scope, ctx: RequestContext, *, occurred_at: datetime, latency_s: float) -> AuditRecord:
    """Status, latency, time to first byte (streams), model, tokens and caller of one API request."""
    principal = ctx.principal
    usage = ctx.usage
    ttft_s = ctx.ttft_s()
    # The route's template (/v1/models/{model}), not the raw path: bounded, and no ids or free text.
    endpoint = getattr(scope.get("route"), "path", None) or scope["path"][:128]
    client = scope.get("client")
    return AuditRecord(
        kind="api",
        occurred_at=occurred_at,
        method=scope["method"][:8],
        endpoint=endpoint,
        status=ctx.status,
        latency_ms=latency_s * 1000,
        ttft_ms=ttft_s * 1000 if ttft_s is not None else None,
        request_id=ctx.request_id,
        key_id=principal.key_id if principal else None,
        role=str(principal.role) if principal else None,
        model=ctx.model,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cache_hit=bool(ctx.cache_hit),
        error_type=ctx.error_type or usage.error_type,
        client_addr=client[0] if client else None,
    )
