"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs ~150 us a layer): request ids and authentication."""

from __future__ import annotations

import os
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import KeyStore, bearer_token
from .errors import APIError, AuthenticationFailed

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


async def _send_error(scope: Scope, send: Send, error: APIError) -> None:
    scope.setdefault("state", {})["error_type"] = error.error_type  # for the audit row
    body = error.to_bytes()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
