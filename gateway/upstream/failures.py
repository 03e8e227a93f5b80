"""What went wrong with a model server, as the client sees it and as routing sees it.

Every aiohttp failure is classified once, by gateway/errors_backends.py's aiohttp table, into: the API error the
client gets (naming the model, never the host), the metric `kind`, whether it is safe to send the request again
(the server cannot have acted on it, or said it did not: refused, reset, 502/503/504), and whether the replica
refused the connection outright. Error answers (a status) are turned into API errors here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import orjson

from ..catalog import ModelSpec
from ..errors import APIError, UpstreamStatus
from ..errors_backends import AIOHTTP_ERRORS, BROKEN, translate_aiohttp_error

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({502, 503, 504})


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
    """Turn an exception from an exchange with a model server into a Failure (errors_backends' aiohttp table)."""
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, APIError):
        return Failure(exc, "malformed")
    fault = translate_aiohttp_error(exc)
    if fault is None or fault is BROKEN:  # a failure the table does not name: worth a line in the log
        log.warning(
            "upstream exchange for %s broke: %s (errno %s)", spec.name, type(exc).__name__, getattr(exc, "errno", None)
        )
        fault = BROKEN
    return Failure(fault.to_error(spec.name), fault.kind, fault.retry_reason, refused=fault.refused)


@contextmanager
def translate_errors(spec: ModelSpec) -> Iterator[None]:
    """Raise aiohttp's failures as the most specific API error (used once bytes have reached the client)."""
    try:
        yield
    except APIError:
        raise
    except AIOHTTP_ERRORS as exc:
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
