"""The gateway's Redis client and its failure policy: what a request does when Redis is down, slow or drops.

Redis is a sidecar that answers in well under a millisecond, so the client's timeouts are milliseconds
(`create_redis(url, timeout_ms=100)`): a dead or hanging Redis costs a request milliseconds, never seconds.
redis-py retries only a connection error, once and at once (a stale pooled connection after a Redis
restart); `RedisPolicy` decides the rest, per route group:

    group    mode 'open' (default)                          mode 'closed'
    limits   the request is let through (no limit checked)    503 redis_unavailable
    cache    a miss (the answer comes from the model)         503 redis_unavailable

    policy = RedisPolicy.from_settings(settings)
    allowed = await policy.call("limits", lambda: limiter.hit(...), fallback=True)
    cached = await policy.call("cache", lambda: redis.get(key), fallback=None)

Every failure is counted per group and kind (`policy.events[("limits", "ConnectionError")]`; skipped calls
count as "circuit_open") and logged at most once per interval per group, with the class of the error only:
never a key or a value. After a connection failure or a timeout the policy stops calling Redis for a short
cool-down (a circuit breaker), so a dead Redis costs about nothing per request; then one call probes it
and, on success, calls flow again. No exception from a wrapped call reaches the client as a 500: errors that
are not Redis' own are counted as "unexpected:<class>" and logged with their traceback frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Literal, TypeVar

import redis.exceptions
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .errors import RedisUnavailable
from .errors_backends import is_redis_unreachable, translate_redis_error

if TYPE_CHECKING:
    from gateway.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
F = TypeVar("F")
FailMode = Literal["open", "closed"]
GROUPS = ("limits", "cache")
CIRCUIT_OPEN = "circuit_open"


def create_redis(
    url: str,
    *,
    timeout_ms: float = 100,
    max_connections: int = 64,
    health_check_interval_s: float = 30,
) -> Redis:
    """A redis.asyncio client for `url` with millisecond timeouts, no retry on timeouts and a bounded pool.

    `timeout_ms` bounds connecting, each reply, and the wait for a free connection when all `max_connections`
    are busy (that wait fails with a ConnectionError). Connections idle for `health_check_interval_s` are
    PINGed before reuse, so one dropped by Redis or a proxy fails on the check, not on the command.
    Close it with `await client.aclose()` (which closes its pool).
    """
    timeout_s = timeout_ms / 1000
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        health_check_interval=health_check_interval_s,
        # One immediate retry, on a connection error only: after Redis restarts, every pooled connection is
        # stale and fails once on first use; the retry reconnects (a refused connect costs microseconds).
        # Timeouts are never retried: a hanging Redis costs one timeout, not two.
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
    )
    return Redis.from_pool(pool)


class RedisPolicy:
    """Run Redis calls for a route group; on failure fall back (fail open) or raise RedisUnavailable (closed).

    One policy per Redis server: the circuit is shared by all groups (if the limiter cannot reach Redis,
    neither can the cache), while counting, logging and the mode are per group.
    """

    def __init__(
        self,
        modes: Mapping[str, FailMode] | None = None,
        *,
        cooldown_s: float = 0.25,
        log_interval_s: float = 10.0,
        deadline_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.modes: dict[str, FailMode] = {group: "open" for group in GROUPS}
        self.modes.update(modes or {})
        for group, mode in self.modes.items():
            if mode not in ("open", "closed"):
                raise ValueError(f"redis fail mode for {group!r} must be 'open' or 'closed', not {mode!r}")
        self.cooldown_s = cooldown_s
        self.log_interval_s = log_interval_s
        # An overall bound per call (pool wait + connect + reply can each take up to the socket timeout).
        self.deadline_s = deadline_s
        self.clock = clock
        self.logger = logger
        # Hook for metrics (Prometheus later): called with (group, kind) for every event.
        self.on_event = on_event
        # (group, kind) -> events since start; kind is the error's class name or "circuit_open".
        self.events: Counter[tuple[str, str]] = Counter()
        self._open_until = -math.inf  # circuit: no Redis calls before this time
        self._tripped = False
        self._probing = False
        self._last_log: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()
        self._last_recovery_log = -math.inf

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: object) -> RedisPolicy:
        return cls(
            {"limits": settings.redis.fail_mode_limits, "cache": settings.redis.fail_mode_cache},
            cooldown_s=settings.redis.cooldown_ms / 1000,
            log_interval_s=settings.redis.log_interval_s,
            deadline_s=3 * settings.redis.timeout_ms / 1000,
            **kwargs,  # type: ignore[arg-type]
        )

    # ---- state -------------------------------------------------------------------------------------------

    def mode(self, group: str) -> FailMode:
        return self.modes.get(group, "open")

    def total(self, group: str | None = None) -> int:
        """Events counted so far, for one group or all."""
        return sum(n for (g, _), n in self.events.items() if group is None or g == group)

    @property
    def circuit_open(self) -> bool:
        """True while calls are being skipped (cool-down after a failure, or a probe in flight)."""
        return self._tripped and (self.clock() < self._open_until or self._probing)

    # ---- calls -------------------------------------------------------------------------------------------

    async def call(self, group: str, operation: Callable[[], Awaitable[T]] | Awaitable[T], *, fallback: F) -> T | F:
        """Await `operation` (a zero-argument callable returning an awaitable, or an awaitable).

        Returns its result, or on failure `fallback` (mode 'open') or raises RedisUnavailable ('closed').
        Pass a callable where you can: while the circuit is open it is never called.
        """
        probe = False
        if self._tripped:
            if self.clock() < self._open_until or self._probing:
                _discard(operation)
                return self._fail(group, CIRCUIT_OPEN, fallback)
            self._probing = probe = True
        try:
            awaitable = operation() if callable(operation) else operation
            if self.deadline_s is not None:
                async with asyncio.timeout(self.deadline_s):
                    result = await awaitable
            else:
                result = await awaitable
        except Exception as exc:
            if translate_redis_error(exc) is None:  # not Redis' failure: a bug, logged with its frames
                frames = "".join(traceback.format_tb(exc.__traceback__))
                return self._fail(group, f"unexpected:{type(exc).__name__}", fallback, frames=frames)
            if is_redis_unreachable(exc):  # an error answer from Redis is no reason to stop calling it
                self._trip()
            return self._fail(group, type(exc).__name__, fallback)
        finally:
            if probe:
                self._probing = False
        if self._tripped:
            self._recovered(group)
        return result

    def _trip(self) -> None:
        self._tripped = True
        self._open_until = self.clock() + self.cooldown_s

    def _recovered(self, group: str) -> None:
        self._tripped = False
        self._open_until = -math.inf
        now = self.clock()
        if now - self._last_recovery_log >= self.log_interval_s:  # a flapping Redis logs once per interval
            self._last_recovery_log = now
            missed = sum(self._unlogged.values())
            self._unlogged.clear()
            self.logger.warning("redis available again (%s); %d events since the last report", group, missed)

    def _fail(self, group: str, kind: str, fallback: F, *, frames: str | None = None) -> F:
        self.events[(group, kind)] += 1
        self._unlogged[group] += 1
        if self.on_event is not None:
            try:
                self.on_event(group, kind)
            except Exception:  # a metrics hook must not turn a fallback into a 500
                self.logger.exception("redis policy on_event hook failed")
        mode = self.mode(group)
        now = self.clock()
        if now - self._last_log.get(group, -math.inf) >= self.log_interval_s:
            count, self._unlogged[group] = self._unlogged[group], 0
            self._last_log[group] = now
            action = "failing open" if mode == "open" else "failing closed (503)"
            level = logging.ERROR if kind.startswith("unexpected:") else logging.WARNING
            self.logger.log(
                level,
                "redis unavailable for %s: %s; %s; %d events in the last interval%s",
                group,
                kind,
                action,
                count,
                f"\n{frames}" if frames else "",
            )
        if mode == "closed":
            raise RedisUnavailable()
        return fallback


def _discard(operation: object) -> None:
    """Close a coroutine we will not await (no 'never awaited' warning)."""
    if inspect.iscoroutine(operation):
        operation.close()


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Stop a Redis listener task for good. Cancel until it ends: a cancellation that lands as redis-py's read
    timeout fires can be swallowed (Python 3.11's asyncio.timeout), and one cancel() would leave shutdown waiting."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    with contextlib.suppress(asyncio.CancelledError):
        await task
