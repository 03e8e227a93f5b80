"""The one error family: every client-visible error class is drawn in gateway/errors.py's docstring with its
parent, status and type (so the drawing cannot go stale), and each backend's translation maps its library's
exceptions to the class and status a client gets, with messages that carry no host, DSN or library text."""

from __future__ import annotations

import errno
import importlib
import pkgutil
import re
from dataclasses import dataclass

import aiohttp
import asyncpg
import httpx
import pytest
import redis.exceptions
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from sqlalchemy import exc as sa_exc

import gateway
import gateway.errors
from gateway.errors import (
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
from gateway.errors_backends import (
    translate_aiohttp_error,
    translate_postgres_error,
    translate_qdrant_error,
    translate_redis_error,
)

# ---- the drawing ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Drawn:
    name: str
    parent: str | None
    status: str  # "404", or a pattern such as "4xx|5xx"
    types: tuple[str, ...]  # "requests|tokens": either


_LINE = re.compile(r"^(?P<prefix>[ |+-]*?)(?P<name>[A-Z]\w+)\s+(?P<status>[\dx|]{3,})\s+(?P<type>[\w|]+)")


def _drawing() -> dict[str, Drawn]:
    """The tree in the docstring, parents found by indentation (4 characters a level)."""
    doc = gateway.errors.__doc__ or ""
    drawn: dict[str, Drawn] = {}
    stack: list[str] = []
    for raw in doc.splitlines():
        line = raw[4:] if raw.startswith("    ") else raw
        match = _LINE.match(line)
        if match is None or match["name"] == "class":
            continue
        depth = len(match["prefix"]) // 4
        del stack[depth:]
        parent = stack[-1] if stack else None
        drawn[match["name"]] = Drawn(match["name"], parent, match["status"], tuple(match["type"].split("|")))
        stack.append(match["name"])
    return drawn


def _all_subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


def _package_errors() -> list[type[APIError]]:
    """Every APIError subclass defined anywhere in the gateway package (every module imported first)."""
    for module in pkgutil.walk_packages(gateway.__path__, "gateway."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    return [cls for cls in _all_subclasses(APIError) if cls.__module__.startswith("gateway.")]


def test_the_drawing_names_every_error_class_of_the_package_with_its_parent_status_and_type() -> None:
    drawn = _drawing()
    classes = [APIError, *_package_errors()]
    assert sorted(drawn) == sorted(cls.__name__ for cls in classes), "the docstring tree and the classes differ"
    for cls in classes:
        entry = drawn[cls.__name__]
        parent = cls.__bases__[0].__name__ if cls is not APIError else None
        assert entry.parent == parent, f"{cls.__name__} is drawn under {entry.parent}, defined under {parent}"
        status = "|".join(part.replace("x", r"\d") for part in entry.status.split("|"))
        assert re.fullmatch(status, str(cls.status_code)), f"{cls.__name__}: drawn {entry.status}, is {cls.status_code}"
        assert cls.error_type in entry.types, f"{cls.__name__}: drawn {entry.types}, is {cls.error_type}"


def test_every_error_class_lives_in_gateway_errors() -> None:
    elsewhere = [f"{cls.__module__}.{cls.__name__}" for cls in _package_errors() if cls.__module__ != "gateway.errors"]
    assert elsewhere == []


# ---- aiohttp -------------------------------------------------------------------------------------------------

_KEY = aiohttp.client_reqrep.ConnectionKey("10.9.8.7", 8001, False, True, None, None, None)
_REFUSED = aiohttp.ClientConnectorError(_KEY, ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
_CONNECT_TIMEOUT = aiohttp.ConnectionTimeoutError("connect to 10.9.8.7 timed out")


@pytest.mark.parametrize(
    ("exc", "error_class", "status", "kind", "retry"),
    [
        (_REFUSED, UpstreamUnavailable, 503, "connect", "connect"),
        (_CONNECT_TIMEOUT, UpstreamUnavailable, 503, "connect", "connect"),
        (TimeoutError(), UpstreamTimeout, 504, "timeout", None),
        (aiohttp.ServerTimeoutError("read from 10.9.8.7 timed out"), UpstreamTimeout, 504, "timeout", None),
        (aiohttp.ServerDisconnectedError(), UpstreamError, 502, "broken", "reset"),
        (aiohttp.ClientPayloadError("truncated"), UpstreamError, 502, "broken", "reset"),
        (aiohttp.ClientOSError(errno.ECONNRESET, "reset by 10.9.8.7"), UpstreamError, 502, "broken", "reset"),
        (aiohttp.ClientOSError(errno.EHOSTUNREACH, "no route to 10.9.8.7"), UpstreamError, 502, "broken", None),
    ],
)  # fmt: skip
def test_aiohttp_failures_become_upstream_errors_naming_the_model_only(
    exc: BaseException, error_class: type[APIError], status: int, kind: str, retry: str | None
) -> None:
    fault = translate_aiohttp_error(exc)
    assert fault is not None
    error = fault.to_error("m")
    assert type(error) is error_class and error.status_code == status
    assert (fault.kind, fault.retry_reason) == (kind, retry)
    assert "'m'" in error.message and "10.9.8.7" not in error.message


def test_aiohttp_translation_leaves_other_errors_alone() -> None:
    assert translate_aiohttp_error(ValueError("not aiohttp's")) is None


# ---- PostgreSQL ----------------------------------------------------------------------------------------------

_DSN = "postgresql://citadel:hunter2@db.internal:5432/llm"


def _wrapped(cause: BaseException) -> sa_exc.DBAPIError:
    """How SQLAlchemy hands an asyncpg error on: a DBAPIError whose cause is the driver's."""
    try:
        raise sa_exc.DBAPIError("SELECT secret", {"p": "prompt"}, cause) from cause
    except sa_exc.DBAPIError as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "error_class", "status"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, f"connect to {_DSN} refused"), DatabaseUnavailable, 503),
        (TimeoutError(), DatabaseUnavailable, 503),
        (sa_exc.TimeoutError("QueuePool limit reached"), DatabaseUnavailable, 503),
        (_wrapped(asyncpg.CannotConnectNowError("the database system is starting up")), DatabaseUnavailable, 503),
        (_wrapped(asyncpg.TooManyConnectionsError("too many clients")), DatabaseUnavailable, 503),
        (_wrapped(asyncpg.exceptions.ConnectionDoesNotExistError("closed mid-query")), DatabaseUnavailable, 503),
        (_wrapped(asyncpg.InvalidPasswordError(f"password authentication failed ({_DSN})")), DatabaseUnavailable, 503),
        (_wrapped(asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte 0x00")), InvalidRequest, 400),
        (_wrapped(asyncpg.exceptions.DataError("invalid input for query argument $1: 2**70")), InvalidRequest, 400),
    ],
)  # fmt: skip
def test_postgres_failures_become_503_or_400_without_the_dsn_or_the_query(
    exc: BaseException, error_class: type[APIError], status: int
) -> None:
    error = translate_postgres_error(exc)
    assert type(error) is error_class and error.status_code == status
    for secret in ("hunter2", "db.internal", "SELECT", "prompt", "0x00", "$1"):
        assert secret not in error.message


def test_a_busy_pool_says_busy_and_a_bad_query_is_not_translated() -> None:
    busy = translate_postgres_error(sa_exc.TimeoutError("QueuePool limit of size 10 overflow 10 reached"))
    assert busy is not None and "busy" in busy.message
    assert translate_postgres_error(_wrapped(asyncpg.UndefinedColumnError("column x does not exist"))) is None


# ---- Redis ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        redis.exceptions.ConnectionError("Error 111 connecting to redis.internal:6379"),
        redis.exceptions.TimeoutError("Timeout reading from redis.internal:6379"),
        redis.exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        TimeoutError(),
        ConnectionResetError(errno.ECONNRESET, "reset"),
    ],
)
def test_redis_failures_become_503_redis_unavailable(exc: BaseException) -> None:
    error = translate_redis_error(exc)
    assert type(error) is RedisUnavailable
    assert (error.status_code, error.error_type, error.code) == (503, "service_unavailable", "redis_unavailable")
    assert error.headers == {"Retry-After": "1"} and "redis.internal" not in error.message


def test_redis_translation_leaves_other_errors_alone() -> None:
    assert translate_redis_error(KeyError("a bug")) is None


# ---- Qdrant --------------------------------------------------------------------------------------------------


_UNREACHABLE = ResponseHandlingException(httpx.ConnectError("qdrant.internal refused"))


def _answer(status: int) -> UnexpectedResponse:
    body = b'{"status": {"error": "Collection `citadel_secret` at qdrant.internal"}}'
    return UnexpectedResponse(status, "reason", body, httpx.Headers())


@pytest.mark.parametrize(
    ("exc", "error_class", "status", "code"),
    [
        (_answer(404), NotFound, 404, "not_found"),
        (_answer(409), CollectionExists, 409, "collection_exists"),
        (_answer(400), InvalidRequest, 400, None),
        (_answer(422), InvalidRequest, 400, None),
        (_answer(401), VectorStoreUnavailable, 503, "vector_store_unavailable"),
        (_answer(500), VectorStoreUnavailable, 503, "vector_store_unavailable"),
        (_UNREACHABLE, VectorStoreUnavailable, 503, "vector_store_unavailable"),
        (TimeoutError(), VectorStoreUnavailable, 503, "vector_store_unavailable"),
        (ValueError("Collection citadel_secret not found"), NotFound, 404, "not_found"),
        (ValueError("Collection citadel_secret already exists"), CollectionExists, 409, "collection_exists"),
        (ValueError("wrong vector size for citadel_secret"), InvalidRequest, 400, None),
    ],
)  # fmt: skip
def test_qdrant_failures_become_the_most_specific_error_without_qdrant_text(
    exc: BaseException, error_class: type[APIError], status: int, code: str | None
) -> None:
    error = translate_qdrant_error(exc)
    assert type(error) is error_class
    assert (error.status_code, error.code) == (status, code)
    assert "qdrant.internal" not in error.message and "citadel_secret" not in error.message


def test_qdrant_translation_leaves_other_errors_alone() -> None:
    assert translate_qdrant_error(KeyError("a bug")) is None
