"""Key revocation across workers and replicas, through Redis pub/sub.

Each worker caches key lookups for `key_cache_ttl_s`. Revoking a key in one worker publishes its id on
`citadel:keys:revoked`; every worker's `RevocationListener` receives it and drops the key from its cache at
once, instead of trusting the stale entry until it expires.

    await publish_revocation(redis, key.id)          # after the revocation is committed to PostgreSQL

    async with RevocationListener(redis, forget=key_store.forget, forget_all=key_store.forget_all):
        ...                                          # serve; the listener runs as a background task

Pub/sub is fire-and-forget: a message published while a listener is not subscribed (Redis restarting, a
dropped connection, the listener still starting) is lost for that listener, and nothing tells it which keys
it missed. So every time the listener (re)subscribes it calls `forget_all()`: the worker empties its key
cache and looks every key up again in PostgreSQL, which is the source of truth. A revocation therefore takes
effect on every worker at once while Redis works, and within one reconnect (a backoff of at most
`backoff_max_s`) after it comes back; while Redis is away, the cache TTL still bounds how long a revoked key
can pass. The listener reconnects by itself with exponential backoff, notices a silent connection by its own
PINGs, and never raises into the app: callback errors are logged and the loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from .redisconn import cancel_and_wait

log = logging.getLogger(__name__)

CHANNEL = "citadel:keys:revoked"

_REDIS_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)


async def publish_revocation(redis: Redis, key_id: uuid.UUID, *, channel: str = CHANNEL) -> int | None:
    """Tell every worker to forget `key_id`. Returns how many listeners received it, None if Redis failed
    (logged; the other workers then drop the key when their cache entry expires or on their next reconnect)."""
    try:
        return int(await redis.publish(channel, str(key_id)))
    except _REDIS_ERRORS as exc:
        log.warning(
            "could not publish a key change (%s); other workers notice it within the cache TTL", type(exc).__name__
        )
        return None


class RevocationListener:
    """Background subscriber that calls `forget(key_id)` per revocation and `forget_all()` per (re)subscription.

    Callbacks may be plain functions or coroutines. Use as an async context manager, or `start()`/`stop()`.
    """

    def __init__(
        self,
        redis: Redis,
        forget: Callable[[uuid.UUID], Any],
        forget_all: Callable[[], Any],
        *,
        channel: str = CHANNEL,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        ping_interval_s: float = 1.0,
    ) -> None:
        self.redis = redis
        self.forget = forget
        self.forget_all = forget_all
        self.channel = channel
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.ping_interval_s = ping_interval_s
        # A connection that answered nothing, not even our PINGs, for this long is treated as dead.
        self.silence_limit_s = 3 * ping_interval_s
        self.subscribed = asyncio.Event()
        self.subscriptions = 0  # successful (re)subscriptions
        self.disconnects = 0
        self.received = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RevocationListener:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the background task; returns at once (Redis may still be away: it keeps trying)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="citadel-revocation-listener")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def wait_subscribed(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self.subscribed.wait()
            return True
        except TimeoutError:
            return False

    # ---- the loop ----------------------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.backoff_initial_s
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except _REDIS_ERRORS as exc:
                if self.subscribed.is_set():
                    log.warning("revocation listener lost Redis (%s); reconnecting", type(exc).__name__)
                    delay = self.backoff_initial_s
            except Exception:  # never let the listener die for good
                log.exception("revocation listener failed; restarting it")
            if self.subscribed.is_set():
                self.disconnects += 1
            self.subscribed.clear()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.backoff_max_s)

    async def _listen_once(self) -> None:
        pubsub: PubSub = self.redis.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            loop = asyncio.get_running_loop()
            # The subscription counts only once Redis confirms it: from then on no message is missed.
            deadline = loop.time() + self.silence_limit_s
            while True:
                message = await pubsub.get_message(timeout=self.ping_interval_s)
                if message is not None and message.get("type") == "subscribe":
                    break
                if loop.time() > deadline:
                    raise redis.exceptions.TimeoutError("no subscription confirmation")
            self.subscriptions += 1
            self.subscribed.set()
            if self.subscriptions > 1:
                log.info("revocation listener subscribed again; forgetting all cached keys")
            await self._call(self.forget_all)
            last_heard = last_ping = loop.time()
            while True:
                message = await pubsub.get_message(timeout=self.ping_interval_s / 2)
                now = loop.time()
                if message is not None:
                    last_heard = now
                    if message.get("type") == "message":
                        await self._handle(message.get("data"))
                if now - last_heard > self.silence_limit_s:
                    raise redis.exceptions.TimeoutError("pub/sub connection silent")
                if now - last_ping >= self.ping_interval_s:
                    last_ping = now
                    await pubsub.ping()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(pubsub.aclose())

    async def _handle(self, data: object) -> None:
        try:
            text = data.decode() if isinstance(data, bytes) else str(data)
            key_id = uuid.UUID(text)
        except ValueError:
            log.warning("ignored a malformed message on %s", self.channel)
            return
        self.received += 1
        await self._call(self.forget, key_id)

    async def _call(self, callback: Callable[..., Any], *args: object) -> None:
        try:
            result = callback(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("revocation callback %s failed", getattr(callback, "__name__", callback))
