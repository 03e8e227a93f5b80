"""The response cache on a real Redis: roundtrip and TTL, size limit, streams, tenant isolation, failures."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.exceptions
from redis.asyncio import Redis

from gateway.auth import Principal, Role
from gateway.cache import ResponseCache, cache_key, replay_stream, tee_stream
from gateway.catalog import ModelSpec
from gateway.inference import Prepared
from gateway.redisconn import RedisPolicy, create_redis
from gateway.upstream.sse import DONE_EVENT
from tests.conftest import free_port
from tests.support.catalogs import chat_entry

ANSWER = orjson.dumps({"id": "chatcmpl-1", "model": "phi3", "choices": [{"message": {"content": "hi"}}]})


def principal() -> Principal:
    """A caller of its own per test: no test sees another's entries, so none needs a FLUSHDB."""
    return Principal(key_id=uuid.uuid4(), name="t", role=Role.USER)


def prepared(*, stream: bool = False, content: str = "hello") -> Prepared:
    spec = ModelSpec(name="phi3", **chat_entry("http://x", upstream_model="upstream"))  # type: ignore[arg-type]
    payload = {"model": "upstream", "messages": [{"role": "user", "content": content}], "temperature": 0}
    return Prepared(endpoint="chat", spec=spec, requested_name="phi3", payload=orjson.dumps(payload), stream=stream)


def event(text: str) -> bytes:
    return b"data: " + orjson.dumps({"model": "phi3", "choices": [{"delta": {"content": text}}]}) + b"\n\n"


async def source(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


ERROR_EVENT = b'data: {"error":{"message":"cut","type":"upstream_error","param":null,"code":null}}\n\n'


@pytest.fixture
def client(redis_client: Redis) -> Redis:
    # The gateway's own client (gateway.redisconn.create_redis: bytes replies, no retries), on a flushed database.
    return redis_client


@pytest.fixture
def cache(client: Redis) -> ResponseCache:
    return ResponseCache(client, ttl_s=60, max_entry_bytes=64 * 1024)


def tee_into(cache: ResponseCache, key: str, chunks: list[bytes], policy: RedisPolicy) -> AsyncIterator[bytes]:
    """The relay as the request path wires it: tee the stream, store it in the background once complete."""

    def store(body: bytes) -> None:
        cache.put_later(key, body, policy=policy)

    return tee_stream(source(chunks), max_bytes=cache.max_entry_bytes, on_complete=store)


async def test_roundtrip_and_ttl_expiry(client: Redis) -> None:
    cache = ResponseCache(client, ttl_s=0.3, max_entry_bytes=1024)
    key = cache_key(principal(), prepared())
    assert await cache.get(key) is None
    assert await cache.put(key, ANSWER) is True
    assert await cache.get(key) == ANSWER
    assert 0 < await client.pttl(key) <= 300
    await asyncio.sleep(0.45)
    assert await cache.get(key) is None


async def test_oversized_entries_are_not_stored(client: Redis) -> None:
    cache = ResponseCache(client, ttl_s=60, max_entry_bytes=len(ANSWER) - 1)
    key = cache_key(principal(), prepared())
    assert await cache.put(key, ANSWER) is False
    assert await cache.put(key, b"") is False
    assert await client.exists(key) == 0
    cache.put_later(key, ANSWER, policy=RedisPolicy())
    await cache.drain()
    assert await client.exists(key) == 0


async def test_a_complete_stream_is_stored_and_replayed_identically(cache: ResponseCache) -> None:
    request = prepared(stream=True)
    key = cache_key(principal(), request)
    chunks = [event("a"), event("b") + event("c"), event("d"), DONE_EVENT]
    policy = RedisPolicy()
    relayed = [chunk async for chunk in tee_into(cache, key, chunks, policy)]
    assert relayed == chunks
    await cache.drain()
    stored = await cache.get(key)
    assert stored == b"".join(chunks)
    replayed = [chunk async for chunk in replay_stream(stored)]
    assert b"".join(replayed) == b"".join(chunks)
    assert replayed == [event("a"), event("b"), event("c"), event("d"), DONE_EVENT]  # one event per chunk
    assert policy.total() == 0


@pytest.mark.parametrize(
    "chunks",
    [
        [event("a"), ERROR_EVENT, DONE_EVENT],
        [event("a"), event("b")],  # no [DONE]
    ],
    ids=["error-event", "no-done"],
)
async def test_an_incomplete_stream_is_not_stored(cache: ResponseCache, chunks: list[bytes]) -> None:
    key = cache_key(principal(), prepared(stream=True))
    policy = RedisPolicy()
    assert [chunk async for chunk in tee_into(cache, key, chunks, policy)] == chunks
    await cache.drain()
    assert await cache.get(key) is None


async def test_two_callers_never_see_each_others_entries(cache: ResponseCache, client: Redis) -> None:
    alice, bob = principal(), principal()
    request = prepared()
    await cache.put(cache_key(alice, request), ANSWER)
    assert await cache.get(cache_key(alice, request)) == ANSWER
    assert await cache.get(cache_key(bob, request)) is None
    await cache.put(cache_key(bob, request), b'{"bob":true}')
    assert await cache.get(cache_key(alice, request)) == ANSWER
    # Purging one key's entries (revocation) leaves the other's.
    await cache.put(cache_key(alice, prepared(content="other")), ANSWER)
    assert await cache.purge(alice.key_id) == 2
    assert await cache.get(cache_key(alice, request)) is None
    assert await cache.get(cache_key(bob, request)) == b'{"bob":true}'


async def test_redis_errors_reach_the_caller_and_the_policy_makes_them_a_miss() -> None:
    dead = create_redis(f"redis://127.0.0.1:{free_port()}/0", timeout_ms=50)
    try:
        cache = ResponseCache(dead, ttl_s=60, max_entry_bytes=1024)
        key = cache_key(principal(), prepared())
        with pytest.raises(redis.exceptions.ConnectionError):
            await cache.get(key)
        with pytest.raises(redis.exceptions.ConnectionError):
            await cache.put(key, ANSWER)
        policy = RedisPolicy()
        assert await policy.call("cache", lambda: cache.get(key), fallback=None) is None
        cache.put_later(key, ANSWER, policy=policy)  # never raises; counted by the policy
        await cache.drain()
        closed = RedisPolicy({"cache": "closed"}, cooldown_s=0)
        cache.put_later(key, ANSWER, policy=closed)  # mode 'closed' has nobody to answer 503 to
        await cache.drain()
        assert policy.total("cache") >= 1 and closed.total("cache") == 1
    finally:
        await dead.aclose()


async def test_a_non_bytes_client_still_gets_bytes(redis_url: str) -> None:
    text_client: Any = Redis.from_url(redis_url, decode_responses=True)
    try:
        cache = ResponseCache(text_client, ttl_s=60, max_entry_bytes=1024)
        key = cache_key(principal(), prepared())
        await cache.put(key, ANSWER)
        assert await cache.get(key) == ANSWER
    finally:
        await text_client.aclose()
