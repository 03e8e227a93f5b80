"""What went wrong with a model server, as the client sees it and as routing sees it.

Every aiohttp failure is classified once here into: the API error the client gets (naming the model, never the
host), the metric `kind`, whether it is safe to send the request again (the server cannot have acted on it, or
said it did not: refused, reset, 502/503/504), and whether the replica refused the connection outright.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import orjson

from ..catalog import ModelSpec
from ..errors import APIError, UpstreamError, UpstreamStatus, UpstreamTimeout, UpstreamUnavailable

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({502, 503, 504})
# A connection that died under the request (aiohttp raises these as ClientOSError, not ConnectionResetError).
_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


class Failure(Exception):
    """One failed attempt: the client's error, the metric kind (None: the replica is fine, e.g. a 4xx), and the
    retry reason (None: do not send it again)."""

    def __init__(
        self, error: APIError, kind: str | None, retry_reason: str | None = None, *, refused: bool = False
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.kind = kind
        self.retry_reason = retry_reason
        self.refused = refused


def classify(exc: BaseException, spec: ModelSpec) -> Failure:
    """Turn an exception from an exchange with a model server into a Failure."""
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        # The connection was never made, so the request was never sent: safe to try another replica.
        error = UpstreamUnavailable(f"The model '{spec.name}' is unavailable: its server did not accept a connection.")
        return Failure(error, "connect", retry_reason="connect")
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        # The server may be working on it: sending it again would run it twice. Not retried.
        return Failure(UpstreamTimeout(f"The model '{spec.name}' did not answer in time."), "timeout")
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = UpstreamUnavailable(
            f"The model '{spec.name}' is unavailable: its server cannot be reached.", param="model"
        )
        return Failure(error, "connect", retry_reason="connect", refused=True)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, ConnectionResetError)) or (
        isinstance(exc, OSError) and exc.errno in _RESET_ERRNOS
    ):
        return Failure(UpstreamError(f"The connection to the model '{spec.name}' broke."), "broken", "reset")
    if isinstance(exc, APIError):
        return Failure(exc, "malformed")
    log.warning(
        "upstream exchange for %s broke: %s (errno %s)", spec.name, type(exc).__name__, getattr(exc, "errno", None)
    )
    return Failure(UpstreamError(f"The connection to the model '{spec.name}' broke."), "broken")


@contextmanager
def translate_errors(spec: ModelSpec) -> Iterator[None]:
    """Raise aiohttp's failures as the most specific API error (used once bytes have reached the client)."""
    try:
        yield
    except APIError:
        raise
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise classify(exc, spec).error from exc


def status_failure(spec: ModelSpec, status: int, body: bytes) -> Failure:
    """An error answer from the model server; 502/503/504 may be tried on another replica."""
    error = status_error(spec, status, body)
    if status in RETRYABLE_STATUSES:
        return Failure(error, "status_5xx", retry_reason=f"status_{status}")
    return Failure(error, "status_5xx" if status >= 500 else None)


def status_error(spec: ModelSpec, status: int, body: bytes) -> UpstreamStatus:
    """An upstream error answer as an API error: 4xx keep their message, 5xx get a generic one."""
    message, param, code = "", None, None
    try:
        parsed = orjson.loads(body)
        error = parsed.get("error", parsed) if isinstance(parsed, dict) else {}
        if isinstance(error, dict):
            message = str(error.get("message") or "")
            param = error.get("param") if isinstance(error.get("param"), str) else None
            code = error.get("code") if isinstance(error.get("code"), (str, int)) else None
    except orjson.JSONDecodeError:
        pass
    if status >= 500 or not message:
        # 5xx messages can carry server internals (paths, stack details, even request text): neither passed
        # on nor logged; the model server's own log has them.
        log.warning("model %s answered %s", spec.name, status)
        return UpstreamStatus(status, f"The model server for '{spec.name}' failed to process the request.")
    # The upstream knows the model by its served name; the client should only see the name it used.
    return UpstreamStatus(status, message.replace(spec.upstream_name, spec.name), param=param, code=code)
