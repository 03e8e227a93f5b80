"""The response cache: exact-match answers in Redis, always scoped to the caller's key.

What lives here (the request path wires it in; get and put raise Redis errors to the caller):
  cache_key(principal, prepared)    the Redis key: SHA-256 over the caller's key id, the endpoint, the public
                                    model name, the stream flags and the canonical upstream payload
  decide(prepared, headers)         whether a request may be served from the cache and/or stored in it
  ResponseCache.get / put           one GET / one SET with a TTL; entries over max_entry_bytes are skipped
  tee_stream(chunks, ...)           passes a relayed SSE stream through and hands back the whole stream only
                                    if it ended with `data: [DONE]` and carried no error event
  replay_stream(body)               a stored stream as SSE, event by event
  cache_headers(hit)                `X-Cache: HIT|MISS` and `Cache-Control: private`

Policy (also in docs/api.md):
  - Cacheable: embeddings always; chat and text completions when `temperature` is 0 or a `seed` is set,
    or when the client asks with the request header `X-Cache: force` (its own risk: a sampled answer is
    then replayed for the TTL).
  - `Cache-Control: no-store` (request): the cache is neither read nor written (RFC 9111 5.2.1.5).
  - `Cache-Control: no-cache`, `max-age=0` or `Pragma: no-cache`: never served from the cache, but the
    fresh answer is stored (RFC 9111 5.2.1.4: no stored response without revalidation; we revalidate by
    asking the model again), so a client can refresh an entry.
  - A hit replays the stored bytes unchanged, `id` and `created` included, as an HTTP cache would: the
    OpenAI clients do not rely on ids being unique across identical requests, and rewriting would cost a
    JSON parse per hit (and per event on a stream). `X-Cache: HIT` tells the two apart.
  - The model name in a stored answer is the one the client asked for: it is part of the key.
  - Errors are never stored (the caller stores only 200 answers; a stream only when complete).
  - Every Redis error (connection, timeout) reaches the caller, whose fail-open policy turns it into a miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from enum import Enum
from typing import TYPE_CHECKING, Any

import orjson

from .errors import RedisUnavailable
from .upstream.sse import DONE_EVENT, EVENT_END

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .auth import Principal
    from .inference import Prepared
    from .redisconn import RedisPolicy


KEY_PREFIX = "citadel:cache:v1:"
# The request header a client sends to cache an answer that is not deterministic.
FORCE_HEADER = "x-cache"
FORCE_VALUE = "force"
ERROR_EVENT_MARK = b'data: {"error":'

_HIT_HEADERS = {"X-Cache": "HIT", "Cache-Control": "private"}
_MISS_HEADERS = {"X-Cache": "MISS", "Cache-Control": "private"}


class CacheDecision(Enum):
    """What the cache may do for one request."""

    BYPASS = "bypass"  # neither read nor write (not cacheable, or `no-store`)
    USE = "use"  # look up; on a miss, store the answer
    REFRESH = "refresh"  # do not serve from the cache, but store the fresh answer (`no-cache`)

    @property
    def read(self) -> bool:
        return self is CacheDecision.USE

    @property
    def write(self) -> bool:
        return self is not CacheDecision.BYPASS


def cache_key(principal: Principal, prepared: Prepared) -> str:
    """The Redis key for this caller's request: `citadel:cache:v1:<key id>:<sha256 hex>`.

    The key id is both in the digest and in clear (so one key's entries can be purged); the other fields
    are length-prefixed so no two different requests hash the same bytes.
    """
    digest = hashlib.sha256()
    digest.update(principal.key_id.bytes)
    for part in (prepared.endpoint.encode(), prepared.requested_name.encode()):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    digest.update(bytes((prepared.stream, prepared.client_wants_usage)))
    digest.update(prepared.payload)
    return f"{KEY_PREFIX}{principal.key_id}:{digest.hexdigest()}"


def _header(headers: Mapping[str, str], name: str) -> str:
    """A header's value from Starlette's Headers (case-insensitive) or a plain dict (any case); '' if absent."""
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if key.lower() == name:
                return candidate
        return ""
    return value


def _directives(headers: Mapping[str, str]) -> set[str]:
    raw = _header(headers, "cache-control")
    return {part.strip().lower().replace(" ", "") for part in raw.split(",")} if raw else set()


def _deterministic(prepared: Prepared) -> bool:
    if prepared.deterministic is not None:  # known from the request (InferenceService.prepare)
        return prepared.deterministic
    if prepared.endpoint == "embeddings":
        return True
    try:
        payload = orjson.loads(prepared.payload)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(payload, dict):
        return False
    if payload.get("seed") is not None:
        return True
    temperature = payload.get("temperature")
    return temperature is not None and float(temperature) == 0.0


def decide(prepared: Prepared, headers: Mapping[str, str]) -> CacheDecision:
    """Whether this request may be served from the cache and whether its answer may be stored."""
    directives = _directives(headers)
    if "no-store" in directives:
        return CacheDecision.BYPASS
    forced = _header(headers, FORCE_HEADER).strip().lower() == FORCE_VALUE
    if not (forced or _deterministic(prepared)):
        return CacheDecision.BYPASS
    if "no-cache" in directives or "max-age=0" in directives or "no-cache" in _header(headers, "pragma").lower():
        return CacheDecision.REFRESH
    return CacheDecision.USE


def is_cacheable(prepared: Prepared, request_headers: Mapping[str, str]) -> bool:
    """True when the cache takes part in this request at all (read, write or both); see decide()."""
    return decide(prepared, request_headers) is not CacheDecision.BYPASS


def cache_headers(*, hit: bool) -> dict[str, str]:
    """The response headers of an answer that went through the cache (a fresh dict: callers may add to it)."""
    return dict(_HIT_HEADERS if hit else _MISS_HEADERS)


class ResponseCache:
    """Exact-match answers in Redis with a TTL. The client must return bytes (decode_responses=False)."""

    def __init__(self, redis: Redis, *, ttl_s: float, max_entry_bytes: int) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.redis = redis
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.max_entry_bytes = max_entry_bytes
        self._pending: set[asyncio.Task[Any]] = set()

    async def get(self, key: str) -> bytes | None:
        """The stored answer, or None. Redis errors propagate (the caller's policy makes them a miss)."""
        value = await self.redis.get(key)
        if value is None:
            return None
        return value.encode() if isinstance(value, str) else bytes(value)

    async def put(self, key: str, body: bytes) -> bool:
        """Store an answer for the TTL; False (and nothing sent) if it is empty or over max_entry_bytes."""
        if not body or len(body) > self.max_entry_bytes:
            return False
        await self.redis.set(key, body, px=self.ttl_ms)
        return True

    def put_later(self, key: str, body: bytes, *, policy: RedisPolicy) -> None:
        """Store in a background task, off the response's path, through the 'cache' group of `policy`.

        A failure is counted and logged by the policy and otherwise ignored: the answer has already gone out.
        """
        if not body or len(body) > self.max_entry_bytes:
            return
        task = asyncio.get_running_loop().create_task(self._store(key, body, policy))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _store(self, key: str, body: bytes, policy: RedisPolicy) -> None:
        with contextlib.suppress(RedisUnavailable):  # mode 'closed': counted and logged, nobody to tell
            await policy.call("cache", lambda: self.put(key, body), fallback=False)

    async def drain(self) -> None:
        """Wait for the stores still in flight (at shutdown, and in tests)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def purge(self, key_id: object) -> int:
        """Delete every entry of one API key (e.g. when it is revoked); the number deleted."""
        deleted = 0
        batch: list[Any] = []
        async for name in self.redis.scan_iter(match=f"{KEY_PREFIX}{key_id}:*", count=500):
            batch.append(name)
            if len(batch) >= 500:
                deleted += await self.redis.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await self.redis.unlink(*batch)
        return deleted


async def tee_stream(
    chunks: AsyncIterator[bytes], *, max_bytes: int, on_complete: Callable[[bytes], None]
) -> AsyncGenerator[bytes, None]:
    """Yield `chunks` unchanged; once the stream has ended with `data: [DONE]` and carried no error event
    (and stayed within max_bytes), call `on_complete` with the whole stream.

    `on_complete` is synchronous and runs after the last chunk went out: schedule the store there
    (ResponseCache.put_later), so the client's stream never waits on Redis. A client that goes away
    mid-stream cancels this generator, and nothing is stored.
    """
    parts: list[bytes] | None = []
    size = 0
    clean = True
    last = b""
    async for chunk in chunks:
        if parts is not None:
            if ERROR_EVENT_MARK in chunk:
                clean = False
                parts = None
            else:
                size += len(chunk)
                if size > max_bytes:
                    parts = None  # too big to store: stop buffering, keep relaying
                else:
                    parts.append(chunk)
        if chunk:
            last = chunk
        yield chunk
    if parts is not None and clean and last.endswith(DONE_EVENT):
        on_complete(b"".join(parts))


async def replay_stream(body: bytes) -> AsyncGenerator[bytes, None]:
    """A stored stream as SSE, one event per chunk, so the client sees a normal stream."""
    start = 0
    while start < len(body):
        end = body.find(EVENT_END, start)
        if end < 0:
            yield body[start:]
            return
        yield body[start : end + 2]
        start = end + 2
