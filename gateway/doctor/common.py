"""What several checks share: fix texts, how to start a model server, an HTTP error in a few words, URLs, GB.
Light on imports: `citadel doctor --url` needs no database or Redis client."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import aiohttp

GB = 1024**3  # bytes in the GB of every size the doctor reports
POSTGRES_DOWN_FIX = (
    "start PostgreSQL (`make run` starts an embedded one; `docker compose up -d postgres`; "
    "`systemctl start postgresql`) or correct the host and port in DATABASE_URL"
)
MIGRATE_FIX = "run `citadel migrate` (or `make migrate`; with compose: `docker compose run --rm migrate`)"
REDIS_DOWN_FIX = (
    "start Redis (`make run` starts a local one; `docker compose up -d redis`; `systemctl start redis-server`) "
    "or correct REDIS_URL"
)


def http_reason(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        reason = os.strerror(error.errno).lower() if error.errno and error.errno > 0 else error.strerror or str(error)
        return f"cannot connect: {reason}"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return "the connection closed without an HTTP answer (not an HTTP server?)"
    if isinstance(exc, aiohttp.ClientOSError):  # reset while sending or reading
        return f"the connection closed without an HTTP answer ({exc.strerror or 'reset'}: not an HTTP server?)"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


def start_fix(model: str, server: str | None = None) -> str:
    """How to start a model's server, in each way this project runs them."""
    local = f"`make run` (its log: .cache/citadel/logs/vllm-{server or model}.log)"
    return (
        f"start it: {local}, `docker compose up -d vllm-{model}` or `systemctl start citadel-vllm@{model}`; "
        f"or point {model.upper()}_BACKENDS at a running server"
    )


def valid_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)
