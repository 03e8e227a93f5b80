"""RateLimiter: one atomic Redis call per request (see the package docstring)."""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Sequence

from limits import RateLimitItem
from redis.asyncio import Redis

from ..auth import Principal
from .config import LimitConfig, LimitPlan, resolve_control, resolve_limits
from .decision import Decision, Settlement, UsageCounters
from .scripts import CHECK_LUA, SETTLE_LUA

_ALLOWED = Decision(allowed=True)


class RateLimiter:
    """Checks and counts a caller's limits in one atomic Redis call; see the module docstring."""

    def __init__(self, redis: Redis, config: LimitConfig | None = None) -> None:
        self._config = config or LimitConfig()
        self._config.validate()
        self._check = redis.register_script(CHECK_LUA)
        self._settle = redis.register_script(SETTLE_LUA)
        self._plans: dict[tuple[Principal, str | None], tuple[LimitPlan, tuple[str, ...]]] = {}
        self._control: dict[Principal, tuple[RateLimitItem | None, str]] = {}

    @property
    def config(self) -> LimitConfig:
        return self._config

    def _plan(self, principal: Principal, model: str | None) -> tuple[LimitPlan, tuple[str, ...]]:
        cache_key = (principal, model)
        found = self._plans.get(cache_key)
        if found is not None:
            return found
        plan = resolve_limits(self._config, principal, model)
        tag = "{" + str(principal.key_id) + "}"
        prefix = self._config.key_prefix
        keys = (
            plan.requests.key_for(prefix, tag, "req") if plan.requests else "",
            plan.model_requests.key_for(prefix, tag, "model", model or "") if plan.model_requests else "",
            plan.tokens.key_for(prefix, tag, "tok") if plan.tokens else "",
        )
        if len(self._plans) >= 10_000:  # principals change when keys are edited; keep the cache bounded
            self._plans.clear()
        self._plans[cache_key] = (plan, keys)
        return plan, keys

    async def check(self, *, principal: Principal, model: str | None, estimated_tokens: int) -> Decision:
        """Count this request against every limit of the caller, or against none (one EVALSHA). Redis errors
        propagate."""
        plan, names = self._plan(principal, model)
        items = (plan.requests, plan.model_requests, plan.tokens)
        kinds = ("requests", "model_requests", "tokens")
        keys: list[str] = []
        args: list[int] = []
        used_kinds: list[str] = []
        for kind, item, name in zip(kinds, items, names, strict=True):
            if item is None:
                continue
            amount = max(0, estimated_tokens) if kind == "tokens" else 1
            keys.append(name)
            args += [item.amount, item.get_expiry() * 1000, amount]
            used_kinds.append(kind)
        if not keys:
            return _ALLOWED
        reply = await self._check(keys=keys, args=[",".join(map(str, args))])
        out = [int(v) for v in reply.split(b"," if isinstance(reply, bytes) else ",")]
        allowed = out[0] == 1
        refused_kind = used_kinds[out[1] - 1] if out[1] else None
        state: dict[str, tuple[UsageCounters, int, int]] = {}
        for i, kind in enumerate(used_kinds):
            used, reset_ms, retry_ms, window = out[2 + 4 * i : 6 + 4 * i]
            limit = args[3 * i]
            state[kind] = (
                UsageCounters(limit=limit, remaining=limit - used, reset_s=reset_ms / 1000),
                retry_ms,
                window,
            )
        requests = _tighter(state.get("requests"), state.get("model_requests"), refused_kind)
        tokens_state = state.get("tokens")
        if allowed:
            return Decision(
                allowed=True,
                requests=requests,
                tokens=tokens_state[0] if tokens_state else None,
                model=model,
                charged_tokens=args[3 * used_kinds.index("tokens") + 2] if tokens_state else 0,
                tokens_window=tokens_state[2] if tokens_state else None,
            )
        assert refused_kind is not None
        retry_ms = state[refused_kind][1]
        return Decision(
            allowed=False,
            requests=requests,
            tokens=tokens_state[0] if tokens_state else None,
            retry_after=max(1, math.ceil(retry_ms / 1000)),
            limited_by=refused_kind,
            model=model,
            too_large=refused_kind == "tokens" and estimated_tokens > state["tokens"][0].limit,
        )

    async def check_control(self, *, principal: Principal) -> Decision:
        """Count one control-plane call (vectors, usage, sessions, feedback, models, admin) against the caller's
        control limit, a bucket of its own (one EVALSHA; none when unlimited). Redis errors propagate."""
        found = self._control.get(principal)
        if found is None:
            item = resolve_control(self._config, principal)
            name = item.key_for(self._config.key_prefix, "{" + str(principal.key_id) + "}", "ctl") if item else ""
            if len(self._control) >= 10_000:
                self._control.clear()
            found = self._control[principal] = (item, name)
        item, name = found
        if item is None:
            return _ALLOWED
        reply = await self._check(keys=[name], args=[f"{item.amount},{item.get_expiry() * 1000},1"])
        values = reply.split(b"," if isinstance(reply, bytes) else ",")
        allowed, _, used, reset_ms, retry_ms, _ = (int(v) for v in values)
        counters = UsageCounters(limit=item.amount, remaining=item.amount - used, reset_s=reset_ms / 1000)
        if allowed == 1:
            return Decision(allowed=True, requests=counters)
        return Decision(
            allowed=False,
            requests=counters,
            retry_after=max(1, math.ceil(retry_ms / 1000)),
            limited_by="control_requests",
        )

    async def settle(self, *, principal: Principal, charged: int, actual: int, window: int | None = None) -> None:
        """Add `actual - charged` to the tokens counter (pass `decision.tokens_window` as `window` so the
        correction lands in the bucket that was charged). Off the critical path; Redis errors propagate."""
        found = self.settlement(principal=principal, charged=charged, actual=actual, window=window)
        if found is not None:
            await self.apply([found])

    def settlement(
        self, *, principal: Principal, charged: int, actual: int, window: int | None = None
    ) -> Settlement | None:
        """The correction settle() would write, to send later with others (SettleQueue); None when there is none."""
        delta = actual - charged
        if delta == 0:
            return None
        plan, names = self._plan(principal, None)
        if plan.tokens is None:
            return None
        period_ms = plan.tokens.get_expiry() * 1000
        return Settlement(key=names[2], period_ms=period_ms, window=-1 if window is None else window, delta=delta)

    async def apply(self, settlements: Sequence[Settlement]) -> int:
        """Write corrections: one EVALSHA per API key (its counters share a hash tag, so a Redis Cluster slot), the
        keys' calls concurrent. Returns how many were written; Redis errors propagate."""
        by_tag: dict[str, list[Settlement]] = defaultdict(list)
        for settlement in settlements:
            by_tag[_hash_tag(settlement.key)].append(settlement)
        calls = [
            self._settle(keys=[s.key for s in group], args=[v for s in group for v in (s.period_ms, s.delta, s.window)])
            for group in by_tag.values()
        ]
        written = await asyncio.gather(*calls)
        return sum(int(n) for n in written)


def _hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: the first `{...}` with something inside, else the whole key."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1 : end] if end > start + 1 else key


def _tighter(
    key: tuple[UsageCounters, int, int] | None, model: tuple[UsageCounters, int, int] | None, refused: str | None
) -> UsageCounters | None:
    """The requests counters to show: the refusing one, else the one with less room left."""
    if refused == "model_requests" and model is not None:
        return model[0]
    if refused == "requests" and key is not None:
        return key[0]
    candidates = [s[0] for s in (key, model) if s is not None]
    if not candidates:
        return None
    return min(candidates, key=lambda c: c.remaining)
