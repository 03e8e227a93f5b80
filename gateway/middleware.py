"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs ~150 us a layer): request ids, authentication and the
bound on every request body."""

from __future__ import annotations

import os
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import KeyStore, bearer_token
from .errors import APIError, AuthenticationFailed, InvalidRequest, PayloadTooLarge

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


class RequestIdMiddleware:
    """Accept a sane `X-Request-ID` or make one; keep it in scope state; echo it on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
        scope.setdefault("state", {})["request_id"] = request_id.decode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id)]
            await send(message)

        await self.app(scope, receive, send_with_id)


class AuthenticationMiddleware:
    """Every path but the public ones needs a valid key; the caller lands in scope state as `principal`.

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
        key_store: KeyStore = scope["app"].state.key_store
        try:
            principal = await key_store.authenticate(token) if token else None
        except APIError as error:  # the key database is unreachable and the key is not cached
            await _send_error(scope, send, error)
            return
        if principal is None:
            await _send_error(scope, send, AuthenticationFailed())
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Every route's request body is bounded (CITADEL_MAX_BODY_BYTES), not only the inference routes': a declared
    Content-Length over the limit is refused with 413 before anything is read, and a body streamed without one
    fails the read (413 through the app's error handlers) as soon as it passes the limit. Inside authentication,
    so a caller without a key gets 401 and nothing of its body is read."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    await _send_error(scope, send, InvalidRequest("The Content-Length header is not a number."))
                    return
                if int(value) > self.max_bytes:
                    await _send_error(scope, send, self._too_large())
                    return
                break
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, bounded_receive, send)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"The request body is larger than this server's limit of {self.max_bytes} bytes.")


async def _send_error(scope: Scope, send: Send, error: APIError) -> None:
    scope.setdefault("state", {})["error_type"] = error.error_type  # for the audit row
    body = error.to_bytes()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
