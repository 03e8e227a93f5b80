"""SettleQueue: token settlements gathered for a moment and sent together, off every request's path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ..auth import Principal
from ..redisconn import RedisPolicy
from .decision import Decision, Settlement
from .limiter import RateLimiter

log = logging.getLogger(__name__)


class SettleQueue:
    """Each answered request corrects its up-front token charge (`actual - charged`). One Redis call per request
    cost ~14% of a request's CPU under the profile; here the corrections of `delay_s` are summed per counter and
    window and written in one call per API key (RateLimiter.apply). The charge stands a little longer: the limit
    errs on the strict side for at most `delay_s`.

    Nothing is lost silently: a failed write (Redis down) goes through the limits' fail-open/closed policy, which
    counts and logs the failure, and is logged here with what it lost; `drain()` (at shutdown) writes the rest.
    """

    def __init__(self, limiter: RateLimiter, policy: RedisPolicy, *, delay_s: float = 0.02) -> None:
        self.limiter = limiter
        self.policy = policy
        self.delay_s = delay_s
        self._pending: dict[tuple[str, int], Settlement] = {}
        self._sender: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # set by drain(): send now, do not wait for the delay
        self.lost = 0  # settlements Redis never took (for the log and the tests)
        self._last_log = -1e9

    def add(self, principal: Principal, decision: Decision, actual: int) -> None:
        """Queue the correction of `decision`'s token charge to `actual`; sent within `delay_s`."""
        settlement = self.limiter.settlement(
            principal=principal, charged=decision.charged_tokens, actual=actual, window=decision.tokens_window
        )
        if settlement is None:
            return
        slot = (settlement.key, settlement.window)
        queued = self._pending.get(slot)
        if queued is None:
            self._pending[slot] = settlement
        else:
            queued.delta += settlement.delta
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_soon())

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def drain(self) -> None:
        """Write everything queued now (shutdown)."""
        self._wake.set()
        if self._sender is not None:
            await self._sender
        await self._send()

    async def _send_soon(self) -> None:
        try:
            while self._pending:
                if not self._wake.is_set():
                    # Wait the delay (or for drain()); settlements that arrive meanwhile join this batch.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.delay_s)
                await self._send()
        finally:
            self._sender = None

    async def _send(self) -> None:
        if not self._pending:
            return
        batch = list(self._pending.values())
        self._pending = {}
        limiter = self.limiter
        try:
            written = await self.policy.call("limits", lambda: limiter.apply(batch), fallback=None)
        except Exception as exc:  # failing closed raises RedisUnavailable: nobody to answer it here
            written, reason = None, type(exc).__name__
        else:
            reason = "redis unavailable"
        if written is None:
            self.lost += len(batch)
            now = time.monotonic()
            if now - self._last_log >= 10:
                self._last_log = now
                log.warning("token settlements not written (%s): %d lost so far (charges stand)", reason, self.lost)
