"""Pure ASGI middleware that records one audit row per API request, after the response has gone out."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..observability.logs import REQUEST_ID
from ..observability.requests import RequestObserver
from .record import AuditRecord


class AuditMiddleware:
    """Status, latency, time to first byte (streams), model, tokens and caller of every API request.

    It only hands a record to the audit log (an O(1) queue put); writing is batched elsewhere, so no
    database work sits on the request's path. Paths in `skip_paths` (liveness, metrics) are not audited.
    """

    def __init__(self, app: ASGIApp, *, skip_paths: frozenset[str], observer: RequestObserver | None = None) -> None:
        self.app = app
        self.skip_paths = skip_paths
        self.observer = observer  # metrics and the request's log line

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.skip_paths:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        occurred_at = datetime.now(UTC)
        status = 500  # if the app fails before answering
        first_byte: float | None = None
        # Every log line written while serving this request (background tasks included) carries its id.
        id_token = REQUEST_ID.set(scope.get("state", {}).get("request_id"))
        capture = self.observer.capture() if self.observer is not None else None
        if capture is not None:
            receive, send = capture.wrap(receive, send)

        async def send_observed(message: Message) -> None:
            nonlocal status, first_byte
            if message["type"] == "http.response.start":
                status = message["status"]
            elif first_byte is None and message.get("body"):
                first_byte = time.perf_counter()
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            finished = time.perf_counter()
            state: dict[str, Any] = scope.get("state", {})
            ttft_s = first_byte - started if first_byte is not None and state.get("stream") else None
            ttft = ttft_s * 1000 if ttft_s is not None else None
            scope["app"].state.audit.record(
                _api_record(
                    scope, state, status=status, occurred_at=occurred_at, latency_s=finished - started, ttft_ms=ttft
                )
            )
            if self.observer is not None:
                self.observer.observe(
                    scope, state, status=status, latency_s=finished - started, ttft_s=ttft_s, capture=capture
                )
            REQUEST_ID.reset(id_token)


def _api_record(
    scope: Scope, state: dict[str, Any], *, status: int, occurred_at: datetime, latency_s: float, ttft_ms: float | None
) -> AuditRecord:
    principal = state.get("principal")
    usage: dict[str, Any] = state.get("usage") or {}
    route = scope.get("route")
    # The route's template (/v1/models/{model}), not the raw path: bounded, and no ids or free text.
    endpoint = getattr(route, "path", None) or scope["path"][:128]
    client = scope.get("client")
    return AuditRecord(
        kind="api",
        occurred_at=occurred_at,
        method=scope["method"][:8],
        endpoint=endpoint,
        status=status,
        latency_ms=latency_s * 1000,
        ttft_ms=ttft_ms,
        request_id=state.get("request_id"),
        key_id=principal.key_id if principal else None,
        role=str(principal.role) if principal else None,
        model=state.get("model"),
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        cache_hit=bool(state.get("cache_hit", False)),
        error_type=state.get("error_type") or usage.get("error_type"),
        client_addr=client[0] if client else None,
    )
