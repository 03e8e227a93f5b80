"""The gateway's one error family: every error a client can see, rendered in one place in the OpenAI shape.

    class                         status  type
    APIError                      500     internal_error
    +-- InvalidRequest            400     invalid_request_error
    |   +-- PayloadTooLarge       413     invalid_request_error   (code request_too_large)
    |   +-- NotFound              404     invalid_request_error   (code not_found)
    |   |   +-- ModelNotFound     404     invalid_request_error   (code model_not_found)
    |   +-- CollectionExists      409     invalid_request_error   (code collection_exists)
    |   +-- DimensionMismatch     400     invalid_request_error   (code dimension_mismatch)
    +-- AuthenticationFailed      401     authentication_error    (code invalid_api_key)
    +-- PermissionDenied          403     permission_error        (code permission_denied)
    |   +-- QuotaExceeded         403     insufficient_quota      (a key's vector storage quota)
    +-- RateLimited               429     requests|tokens         (code rate_limit_exceeded, Retry-After)
    |   +-- QueueShareExceeded    429     requests                (code queue_share_exceeded: a key's share
    |                                                               of a model's admission queue, Retry-After)
    +-- ClientClosedRequest       499     client_closed           (the client hung up while its request waited)
    +-- DatabaseUnavailable       503     service_unavailable     (PostgreSQL unreachable or not configured)
    +-- RedisUnavailable          503     service_unavailable     (a route group failing closed, Retry-After)
    +-- VectorStoreUnavailable    503     service_unavailable     (Qdrant unreachable or not usable here)
    +-- UpstreamError             502     upstream_error          (the model server broke the exchange)
        +-- UpstreamStatus        4xx|5xx invalid_request_error|upstream_error  (its own status, message sanitised)
        +-- UpstreamUnavailable   503     service_unavailable     (refused, unreachable)
        |   +-- ModelSaturated    503     service_unavailable     (code model_saturated: the admission queue
        |                                                           is full or the wait too long, Retry-After)
        +-- UpstreamTimeout       504     timeout

Library errors are translated at the boundary to the most specific class, one table per backend in
gateway/errors_backends.py (aiohttp, asyncpg/SQLAlchemy, redis-py, qdrant-client); pydantic's and Starlette's
by the handlers below. tests/unit/test_error_catalogue.py keeps this drawing and the classes in step.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from .context import note_error

log = logging.getLogger(__name__)

# Error messages must never echo a whole input back; long texts are cut to this.
MAX_MESSAGE_CHARS = 500


class APIError(Exception):
    """Base of every error a client may see; knows its HTTP status and OpenAI `type`."""

    status_code = 500
    error_type = "internal_error"
    default_code: str | int | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message[:MAX_MESSAGE_CHARS]
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.body())

    def to_response(self) -> Response:
        return Response(
            self.to_bytes(), status_code=self.status_code, headers=self.headers, media_type="application/json"
        )


class InvalidRequest(APIError):
    status_code = 400
    error_type = "invalid_request_error"


class PayloadTooLarge(InvalidRequest):
    status_code = 413
    default_code = "request_too_large"


class NotFound(InvalidRequest):
    status_code = 404
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"

    def __init__(self, model: str) -> None:
        shown = model if len(model) <= 64 else model[:64] + "..."
        super().__init__(f"The model '{shown}' does not exist or you do not have access to it.", param="model")


class AuthenticationFailed(APIError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"

    def __init__(self, message: str = "Invalid or missing API key. Send 'Authorization: Bearer <key>'.") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class PermissionDenied(APIError):
    status_code = 403
    error_type = "permission_error"
    default_code = "permission_denied"


class QuotaExceeded(PermissionDenied):
    """The key holds as much as its quota allows; deleting frees room."""

    error_type = "insufficient_quota"
    default_code = "quota_exceeded"


class UpstreamError(APIError):
    status_code = 502
    error_type = "upstream_error"
    default_code = "bad_gateway"


class UpstreamStatus(UpstreamError):
    """The model server answered with an error status; its message is passed on, trimmed."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | int | None = None):
        super().__init__(message, param=param, code=code)
        self.status_code = status
        self.error_type = "invalid_request_error" if 400 <= status < 500 else "upstream_error"


class UpstreamUnavailable(UpstreamError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "model_unavailable"


class ModelSaturated(UpstreamUnavailable):
    """The model is busy, not broken: its admission queue is full, or a request waited its longest."""

    default_code = "model_saturated"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, param="model", headers={"Retry-After": str(retry_after_s)})


class UpstreamTimeout(UpstreamError):
    status_code = 504
    error_type = "timeout"
    default_code = "upstream_timeout"


class CollectionExists(InvalidRequest):
    status_code = 409
    default_code = "collection_exists"


class DimensionMismatch(InvalidRequest):
    default_code = "dimension_mismatch"


class RateLimited(APIError):
    """429 in OpenAI's shape (type "requests" or "tokens", code "rate_limit_exceeded") with Retry-After."""

    status_code = 429
    error_type = "requests"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, headers: dict[str, str], error_type: str = "requests") -> None:
        super().__init__(message, headers=headers)
        self.error_type = error_type


class QueueShareExceeded(RateLimited):
    """A key already has as many requests waiting for a model as one key may (CITADEL_ADMISSION_KEY_QUEUE_MAX)."""

    default_code = "queue_share_exceeded"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class ClientClosedRequest(APIError):
    """The client hung up while its request waited at the gateway (nginx's 499: nobody reads the answer; the
    status is for the audit row and the metrics)."""

    status_code = 499
    error_type = "client_closed"
    default_code = "client_closed_request"


class DatabaseUnavailable(APIError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "database_unavailable"


class RedisUnavailable(APIError):
    """503 for a route group that fails closed while Redis is unavailable."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "redis_unavailable"

    def __init__(self, message: str = "A required service is temporarily unavailable; retry shortly.") -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class VectorStoreUnavailable(APIError):
    """Qdrant is unreachable, timed out, or the embedded store cannot be opened by this process."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "vector_store_unavailable"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or "The vector store is unavailable; try again later.")


_STARLETTE_STATUS_MESSAGES = {404: "Not found.", 405: "Method not allowed."}


def install_error_handlers(app: FastAPI) -> None:
    """Render every error, ours or a library's, in the OpenAI shape; never a traceback."""

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        note_error(request.scope, exc.error_type)  # for the audit row
        return exc.to_response()

    async def on_http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc.__cause__, APIError):
            # FastAPI turns any error raised while it reads a body into a 400 "error parsing the body"; one of
            # ours (the body bound's 413) is rendered as itself.
            return await on_api_error(request, exc.__cause__)
        message = _STARLETTE_STATUS_MESSAGES.get(exc.status_code, "Request failed.")
        error_class = NotFound if exc.status_code == 404 else InvalidRequest
        error = error_class(message, headers=dict(exc.headers or {}))
        error.status_code = exc.status_code
        return error.to_response()

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        first = errors[0] if errors else {}
        location = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        return InvalidRequest(f"Invalid request: {first.get('msg', 'malformed input')}", param=location).to_response()

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # Logged with its traceback on the server side only; the client gets a generic message.
        log.exception("unhandled error while serving %s %s", request.method, request.url.path)
        note_error(request.scope, "internal_error")
        return APIError("The server had an error while processing your request.").to_response()

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)
