"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs ~150 us a layer): the request layer (context, id, audit,
metrics, log line), authentication and the bound on every request body."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .audit.middleware import api_record
from .auth import KeyStore, bearer_token
from .context import CONTEXT_KEY, RequestContext, context_of, note_error
from .errors import APIError, AuthenticationFailed, InvalidRequest, PayloadTooLarge
from .observability.exposition import HttpMetrics
from .observability.logs import REQUEST_ID
from .observability.requests import RequestObserver
from .services import scope_services

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


class RequestLayer:
    """The outermost layer: the request's RequestContext and id, then, once the answer is out, its audit row,
    metrics and log line (one layer instead of four: each pure ASGI layer costs a call and a `send` wrapper).

    Accepts a sane `X-Request-ID` or makes one and echoes it on the response. Paths in `unaudited` (liveness,
    metrics, status polling) get no audit row, request metrics or log line; the HTTP-layer metrics count
    every path but /metrics. Audit is only a queue put: no database work sits on the request's path.
    """

    def __init__(
        self, app: ASGIApp, *, unaudited: frozenset[str], observer: RequestObserver, http: HttpMetrics
    ) -> None:
        self.app = app
        self.unaudited = unaudited
        self.observer = observer
        self.http = http

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                if _VALID_REQUEST_ID.match(value):
                    request_id = value
                break
        if request_id is None:
            request_id = os.urandom(16).hex().encode()
        started = time.perf_counter()
        ctx = scope[CONTEXT_KEY] = RequestContext(request_id=request_id.decode(), started=started)
        audited = scope["path"] not in self.unaudited
        occurred_at = datetime.now(UTC) if audited else None
        capture = self.observer.capture() if audited else None
        if capture is not None:
            receive, send = capture.wrap(receive, send)
        response_headers: list[tuple[bytes, bytes]] = []

        async def send_observed(message: Message) -> None:
            nonlocal response_headers
            if message["type"] == "http.response.start":
                ctx.status = message["status"]
                response_headers = message.get("headers", [])
                message["headers"] = [*response_headers, (REQUEST_ID_HEADER, request_id)]
            elif ctx.first_byte is None and message.get("body"):
                ctx.first_byte = time.perf_counter()
            await send(message)

        # Every log line written while serving this request (background tasks included) carries its id.
        id_token = REQUEST_ID.set(ctx.request_id)
        try:
            await self.app(scope, receive, send_observed)
        except Exception:
            # Rendered as a 500 by Starlette's outermost handler, after this layer: note it for the audit row.
            ctx.error_type = ctx.error_type or "internal_error"
            raise
        finally:
            if ctx.ticket is not None:
                ctx.ticket.release()  # idempotent: normally released when the answer ended
            latency_s = time.perf_counter() - started
            if occurred_at is not None:
                scope_services(scope).audit.record(api_record(scope, ctx, occurred_at=occurred_at, latency_s=latency_s))
                self.observer.observe(scope, ctx, latency_s=latency_s, capture=capture)
            self.http.observe(scope, ctx.status, latency_s, response_headers)
            REQUEST_ID.reset(id_token)


class AuthenticationMiddleware:
    """Every path but the public ones needs a valid key; the caller lands in the request's context as `principal`.

    Authorization (which role may do what) is each route's `require(...)` dependency, and create_app
    refuses to build an app with a route that has none: deny by default at both levels.
    """

    def __init__(self, app: ASGIApp, *, public_paths: frozenset[str]) -> None:
        self.app = app
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
                break
        token = bearer_token(authorization)
        # Built in the lifespan (it needs the database); Starlette puts the app in the scope.
        key_store: KeyStore = scope_services(scope).key_store
        try:
            principal = await key_store.authenticate(token) if token else None
        except APIError as error:  # the key database is unreachable and the key is not cached
            await _send_error(scope, send, error)
            return
        if principal is None:
            await _send_error(scope, send, AuthenticationFailed())
            return
        context_of(scope).principal = principal
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Every route's request body is bounded (CITADEL_MAX_BODY_BYTES), not only the inference routes': a declared
    Content-Length over the limit is refused with 413 before anything is read, and a body streamed without one
    fails the read (413 through the app's error handlers) as soon as it passes the limit. Inside authentication,
    so a caller without a key gets 401 and nothing of its body is read. A path in `overrides` has its own bound
    (the file upload's is the batch file limit)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, overrides: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.overrides = dict(overrides or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.overrides.get(scope["path"], self.max_bytes)
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    await _send_error(scope, send, InvalidRequest("The Content-Length header is not a number."))
                    return
                if int(value) > max_bytes:
                    await _send_error(scope, send, _too_large(max_bytes))
                    return
                break
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise _too_large(max_bytes)
            return message

        await self.app(scope, bounded_receive, send)


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than this server's limit of {max_bytes} bytes.")


async def _send_error(scope: Scope, send: Send, error: APIError) -> None:
    note_error(scope, error.error_type)  # for the audit row
    body = error.to_bytes()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
