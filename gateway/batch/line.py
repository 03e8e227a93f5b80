"""One batch line through the same pipeline as a live request (limits, allow-list, cache, admission at batch
priority, forwarding, settlement), as the batch's key; then its one audit row (endpoint `batch:<path>`, request id
`<batch id>-<line>`) and its request metrics, as the request layer (gateway/middleware.py) writes them."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Scope

from ..admission.priority import PRIORITY_HEADER, Priority
from ..audit.middleware import api_record
from ..auth import Principal, Role
from ..context import CONTEXT_KEY, RequestContext
from ..errors import APIError
from ..keystore import principal_from_row
from ..observability.logs import REQUEST_ID
from ..services import Services
from ..store.models import BOOTSTRAP_ADMIN_ID, ApiKey
from .batches import PendingLine
from .validate import ENDPOINT_OF_PATH

log = logging.getLogger(__name__)

# The audit row's endpoint of a batch line: marks batch work apart from the same endpoint's live requests.
BATCH_ENDPOINT_PREFIX = "batch:"
_HEADERS = [(PRIORITY_HEADER.lower().encode(), Priority.BATCH.value.encode()), (b"content-type", b"application/json")]


@dataclass(frozen=True, slots=True)
class _RoutePath:
    """Stands for the route in the metrics' scope: the request metrics label a line by its endpoint's template."""

    path: str


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """What one line got: the HTTP status and JSON body a live client would have, and a 429's or 503's wait."""

    status_code: int
    body: Any  # the answer's JSON, or an error in OpenAI's shape
    request_id: str
    retry_after_s: float | None = None

    @property
    def error_code(self) -> str | None:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        return str(code) if code is not None else None

    def response_json(self) -> dict[str, Any]:
        """The line's `response` in the output file ({status_code, request_id, body})."""
        return {"status_code": self.status_code, "request_id": self.request_id, "body": self.body}


async def load_principal(session: AsyncSession, key_id: uuid.UUID) -> Principal | None:
    """The batch key as a caller, None when it is revoked, expired or gone (its lines then fail `key_revoked`)."""
    if key_id == BOOTSTRAP_ADMIN_ID:  # the bootstrap admin key has no row
        return Principal(key_id=BOOTSTRAP_ADMIN_ID, name="bootstrap-admin", role=Role.ADMIN)
    row = await session.scalar(select(ApiKey).where(ApiKey.id == key_id))
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None and row.expires_at <= datetime.now(UTC):
        return None
    return principal_from_row(row)


async def run_line(
    services: Services, app: Any, *, endpoint_path: str, line: PendingLine, principal: Principal
) -> LineOutcome:
    """Serve one line as a live POST to `endpoint_path` would be, and audit and measure it once."""
    request_id = f"{line.batch_id}-{line.line_no}"
    started = time.perf_counter()
    occurred_at = datetime.now(UTC)
    ctx = RequestContext(request_id=request_id, started=started, principal=principal)
    body = orjson.dumps(line.body)
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": endpoint_path,
        "raw_path": endpoint_path.encode(),
        "headers": list(_HEADERS),
        "query_string": b"",
        "client": None,
        "app": app,
        CONTEXT_KEY: ctx,
    }
    id_token = REQUEST_ID.set(request_id)
    try:
        outcome = await _serve(services, scope, ctx, principal, body, endpoint_path)
    finally:
        if ctx.ticket is not None:
            ctx.ticket.release()  # idempotent; normally given back when the answer ended
        latency_s = time.perf_counter() - started
        scope["path"] = BATCH_ENDPOINT_PREFIX + endpoint_path
        services.audit.record(api_record(scope, ctx, occurred_at=occurred_at, latency_s=latency_s))
        services.observer.observe({**scope, "route": _RoutePath(endpoint_path)}, ctx, latency_s=latency_s)
        REQUEST_ID.reset(id_token)
    return outcome


async def _serve(
    services: Services, scope: Scope, ctx: RequestContext, principal: Principal, body: bytes, endpoint_path: str
) -> LineOutcome:
    request_id = ctx.request_id
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no client to hang up: wait until the runner cancels the line
        raise AssertionError("unreachable")

    request = Request(scope, receive)
    try:
        response = await services.pipeline.serve(
            endpoint=ENDPOINT_OF_PATH[endpoint_path], request=request, principal=principal, session=None
        )
        answer = await _body_of(response)
        ctx.status = response.status_code
        if response.background is not None:
            await response.background()  # settlement and cache store, as Starlette runs them after a response
    except APIError as error:
        ctx.status = error.status_code
        ctx.error_type = ctx.error_type or error.error_type
        return LineOutcome(error.status_code, error.body(), request_id, _retry_after(error.headers))
    except asyncio.CancelledError:
        ctx.status, ctx.error_type = 499, "client_closed_request"  # the runner stopped mid-line
        raise
    except Exception as exc:  # never a traceback into the output file; the type only in the log
        log.error("batch line failed: %s", type(exc).__name__)
        ctx.status, ctx.error_type = 500, "internal_error"
        failure = APIError("The server failed to process this request.", code="internal_error")
        return LineOutcome(500, failure.body(), request_id)
    try:
        parsed = orjson.loads(answer)
    except orjson.JSONDecodeError:
        parsed = answer.decode("utf-8", "replace")
    return LineOutcome(ctx.status, parsed, request_id)


async def _body_of(response: Response) -> bytes:
    if isinstance(response, StreamingResponse):  # batches refuse `stream`; a stream is read whole all the same
        chunks = [chunk if isinstance(chunk, bytes) else str(chunk).encode() async for chunk in response.body_iterator]
        return b"".join(chunks)
    return bytes(response.body)


def _retry_after(headers: dict[str, str]) -> float | None:
    value = headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
