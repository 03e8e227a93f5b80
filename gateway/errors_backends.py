"""One translation per backend library, from its exceptions to the gateway's error family (gateway/errors.py).

    backend                       function                          what a client may get
    aiohttp (model servers)       translate_aiohttp_error(exc)      UpstreamUnavailable, UpstreamTimeout, UpstreamError
                                  (an UpstreamFault: the error, plus the metric kind and the retry rule)
    asyncpg/SQLAlchemy (Postgres) translate_postgres_error(exc)     DatabaseUnavailable, InvalidRequest
    redis-py                      translate_redis_error(exc)        RedisUnavailable
    qdrant-client                 translate_qdrant_error(exc)       NotFound, CollectionExists, InvalidRequest,
                                                                    VectorStoreUnavailable

Each returns None for an exception that is not its library's failure (a bug, to be raised as it is). They are
pure: the call site logs (by class name only) and counts metrics. No message carries a host, DSN, key, query,
payload or a library's repr: every message below is a fixed text, at most naming the model the client asked for.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

import aiohttp
import asyncpg
import redis.exceptions
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from sqlalchemy import exc as sa_exc

from .errors import (
    APIError,
    CollectionExists,
    DatabaseUnavailable,
    InvalidRequest,
    NotFound,
    RedisUnavailable,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    VectorStoreUnavailable,
)

# ---- aiohttp: the model servers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpstreamFault:
    """What one aiohttp failure means: the client's error, the metric kind, and whether another replica may be
    tried (`retry_reason`; None: the server may have acted on the request) or refused the connection outright."""

    error: type[UpstreamError]
    message: str  # "{model}" becomes the model name the client used, never the replica's host
    kind: str
    retry_reason: str | None = None
    refused: bool = False
    param: str | None = None

    def to_error(self, model: str) -> UpstreamError:
        return self.error(self.message.format(model=model), param=self.param)


# The connection was never made, so the request was never sent: safe to try another replica.
CONNECT_TIMEOUT = UpstreamFault(
    UpstreamUnavailable,
    "The model '{model}' is unavailable: its server did not accept a connection.",
    "connect",
    retry_reason="connect",
)
# The server may be working on it: sending it again would run it twice. Not retried.
READ_TIMEOUT = UpstreamFault(UpstreamTimeout, "The model '{model}' did not answer in time.", "timeout")
UNREACHABLE = UpstreamFault(
    UpstreamUnavailable,
    "The model '{model}' is unavailable: its server cannot be reached.",
    "connect",
    retry_reason="connect",
    refused=True,
    param="model",
)
# A connection that died under the request: the server dropped it before answering, so it may be sent again.
RESET = UpstreamFault(UpstreamError, "The connection to the model '{model}' broke.", "broken", retry_reason="reset")
BROKEN = UpstreamFault(UpstreamError, "The connection to the model '{model}' broke.", "broken")

# First match wins: aiohttp's ConnectionTimeoutError is also a ServerTimeoutError, which is also a TimeoutError,
# and ClientConnectorError is an OSError.
AIOHTTP_TABLE: tuple[tuple[tuple[type[BaseException], ...], UpstreamFault], ...] = (
    ((aiohttp.ConnectionTimeoutError,), CONNECT_TIMEOUT),
    ((TimeoutError, aiohttp.ServerTimeoutError), READ_TIMEOUT),
    ((aiohttp.ClientConnectorError,), UNREACHABLE),
    ((aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, ConnectionResetError), RESET),
)
# aiohttp raises a reset under the request as ClientOSError with one of these, not as ConnectionResetError.
_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})
# What an exchange with a model server may raise on its own; anything else is a bug, not the server's fault.
AIOHTTP_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, aiohttp.ClientError, OSError)


def translate_aiohttp_error(exc: BaseException) -> UpstreamFault | None:
    """The aiohttp table's row for `exc`, BROKEN for another failure of the exchange, None when `exc` is not one.

    A fault rather than an error: routing needs the metric kind and the retry rule too; `.to_error(model)` is
    the client's error."""
    if not isinstance(exc, AIOHTTP_ERRORS):
        return None
    for types, fault in AIOHTTP_TABLE:
        if isinstance(exc, types):
            return fault
    if isinstance(exc, OSError) and exc.errno in _RESET_ERRNOS:
        return RESET
    return BROKEN


# ---- asyncpg / SQLAlchemy: PostgreSQL --------------------------------------------------------------------------

# asyncpg errors that mean "no usable connection", as opposed to a bad query.
_ASYNCPG_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # class 08, and ConnectionDoesNotExistError (dropped mid-query)
    asyncpg.CannotConnectNowError,  # 57P03: starting up, shutting down
    asyncpg.AdminShutdownError,  # 57P01
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.TooManyConnectionsError,  # 53300
    asyncpg.InvalidAuthorizationSpecificationError,  # 28000 and 28P01 (bad password)
)
POSTGRES_CONNECTION_ERRORS = (OSError, TimeoutError, sa_exc.TimeoutError, *_ASYNCPG_CONNECTION_ERRORS)
# Values PostgreSQL or asyncpg refuse: class 22 on the server (a NUL character, a date or number out of range),
# and asyncpg's own check of an argument before sending it (an integer past 64 bits).
POSTGRES_DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions._base.DataError,
)
DATABASE_UNREACHABLE = "The database is unreachable. Try again later."
DATABASE_BUSY = "The database is busy: no connection became free in time. Try again."
REFUSED_VALUE = (
    "A value in this request cannot be stored or compared (a NUL character, or a number or date out of range)."
)


def _in_chain(exc: BaseException, types: tuple[type[BaseException], ...], *, invalidated: bool = False) -> bool:
    """True when `exc` or any error it wraps (its causes and contexts) is one of `types` (or, with `invalidated`,
    a DBAPIError SQLAlchemy's own disconnect detection flagged: "connection is closed" and the like)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, types):
            return True
        if invalidated and isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False


def is_connection_error(exc: BaseException) -> bool:
    """True when `exc`, or any error it wraps, says the database cannot be reached (not a bad query)."""
    return _in_chain(exc, POSTGRES_CONNECTION_ERRORS, invalidated=True)


def is_data_error(exc: BaseException) -> bool:
    """True when `exc`, or any error it wraps, is the database refusing a value of the request (not a fault)."""
    return _in_chain(exc, POSTGRES_DATA_ERRORS)


def translate_postgres_error(exc: BaseException) -> APIError | None:
    """503 for a connection failure (refused, timed out, dropped, pool exhausted, server starting or stopping), 400
    for a value the database refuses (which value is not echoed back); None for anything else (a bug)."""
    if is_connection_error(exc):
        # Only the pool's own timeout means "busy"; a connect timeout underneath is "unreachable".
        return DatabaseUnavailable(DATABASE_BUSY if isinstance(exc, sa_exc.TimeoutError) else DATABASE_UNREACHABLE)
    if is_data_error(exc):
        return InvalidRequest(REFUSED_VALUE)
    return None


# ---- redis-py ----------------------------------------------------------------------------------------------------

# Errors that mean "Redis is not there or not answering": they trip the policy's circuit. redis-py's
# ConnectionError covers refused and dropped connections, pool exhaustion and a server still loading; OSError and
# the builtin TimeoutError are what the asyncio layer may raise underneath.
REDIS_UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    TimeoutError,
    OSError,
)
try:  # the `limits` storages wrap driver errors in their own
    from limits.errors import StorageError

    REDIS_UNREACHABLE_ERRORS = (*REDIS_UNREACHABLE_ERRORS, StorageError)
except ImportError:  # pragma: no cover
    pass


def is_redis_unreachable(exc: BaseException) -> bool:
    """True when Redis is not there or not answering (as opposed to answering with an error)."""
    return isinstance(exc, REDIS_UNREACHABLE_ERRORS)


def translate_redis_error(exc: BaseException) -> RedisUnavailable | None:
    """The 503 (for a route group failing closed) for Redis unreachable or answering an error; None for an error
    that is not Redis' (the policy still fails that call, counted as unexpected)."""
    if is_redis_unreachable(exc) or isinstance(exc, redis.exceptions.RedisError):
        return RedisUnavailable()
    return None


# ---- qdrant-client -------------------------------------------------------------------------------------------------

NO_SUCH_COLLECTION = "No such collection."
COLLECTION_EXISTS = "A collection with that name already exists."
VECTOR_STORE_REFUSED = "The vector store refused the request."
# Qdrant's HTTP answers the client is told about; any other (401/403: a wrong QDRANT_API_KEY, 5xx) is "unavailable".
_QDRANT_STATUSES: dict[int, tuple[type[InvalidRequest], str, str | None]] = {
    404: (NotFound, NO_SUCH_COLLECTION, "collection"),
    409: (CollectionExists, COLLECTION_EXISTS, "name"),
    400: (InvalidRequest, VECTOR_STORE_REFUSED, None),
    422: (InvalidRequest, VECTOR_STORE_REFUSED, None),
}
QDRANT_UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (ResponseHandlingException, TimeoutError, OSError)


def translate_qdrant_error(exc: BaseException) -> APIError | None:
    """The most specific error for a qdrant-client failure, from a server or the embedded local mode (which
    reports its refusals as ValueError); None for anything else."""
    if isinstance(exc, UnexpectedResponse):
        known = _QDRANT_STATUSES.get(exc.status_code or 0)
        if known is None:
            return VectorStoreUnavailable()
        error_class, message, param = known
        return error_class(message, param=param)
    if isinstance(exc, QDRANT_UNREACHABLE_ERRORS):
        return VectorStoreUnavailable()
    if isinstance(exc, ValueError):
        text = str(exc)  # matched, never shown: it may name a path or a payload
        if "not found" in text:
            return NotFound(NO_SUCH_COLLECTION, param="collection")
        if "already exists" in text:
            return CollectionExists(COLLECTION_EXISTS, param="name")
        return InvalidRequest(VECTOR_STORE_REFUSED)
    return None
