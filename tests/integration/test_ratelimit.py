"""The rate limiter on a real Redis: limits, headers, per-model limits, tokens and settle, atomicity under
concurrency within one process and across processes."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import pytest_asyncio
from redis.asyncio import Redis

from gateway.auth import Principal, Role
from gateway.ratelimit import LimitConfig, RateLimiter
from gateway.ratelimit.settle import SettleQueue
from gateway.redisconn import RedisPolicy

ROOT = Path(__file__).resolve().parents[2]


def principal(role: Role = Role.USER, rpm: int | None = None, tpm: int | None = None) -> Principal:
    return Principal(key_id=uuid.uuid4(), name="k", role=role, requests_per_minute=rpm, tokens_per_minute=tpm)


async def clear_of_window_edge(redis: Redis, period_s: int = 60, margin_s: float = 5.0) -> None:
    """Wait (by the Redis clock) until the next window edge is more than margin_s away, so that reading the
    counters back after a burst does not see the previous window's share start to decay."""
    seconds, micros = await redis.time()
    left = period_s - (seconds % period_s + micros / 1e6)
    if left < margin_s:
        await asyncio.sleep(left + 0.05)


@pytest_asyncio.fixture(autouse=True)
async def _clear_of_minute_edge(redis_client: Redis) -> None:
    """The tests read exact counts back; keep them off the minute edge (see clear_of_window_edge)."""
    await clear_of_window_edge(redis_client)


def limiter(redis: Redis, **config: object) -> RateLimiter:
    config.setdefault("tokens_default", None)
    return RateLimiter(redis, LimitConfig(**config))  # type: ignore[arg-type]


async def test_limit_then_429_with_headers(redis_client: Redis) -> None:
    rl = limiter(redis_client, role_requests={"user": "3/minute"})
    caller = principal()
    for expected_remaining in (2, 1, 0):
        decision = await rl.check(principal=caller, model="phi3", estimated_tokens=10)
        assert decision.allowed
        headers = decision.headers()
        assert headers["x-ratelimit-limit-requests"] == "3"
        assert headers["x-ratelimit-remaining-requests"] == str(expected_remaining)
        assert headers["x-ratelimit-reset-requests"].endswith("s")
        assert "Retry-After" not in headers
    refused = await rl.check(principal=caller, model="phi3", estimated_tokens=10)
    assert not refused.allowed
    assert refused.limited_by == "requests"
    assert refused.retry_after is not None and 1 <= refused.retry_after <= 120
    error = refused.error()
    assert error.status_code == 429
    assert error.headers["Retry-After"] == str(refused.retry_after)
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.headers["x-ratelimit-limit-requests"] == "3"
    # other keys are not affected: limits are per API key id
    assert (await rl.check(principal=principal(), model="phi3", estimated_tokens=10)).allowed


async def test_key_record_limit_is_used(redis_client: Redis) -> None:
    rl = limiter(redis_client, role_requests={"user": "100/minute"})
    caller = principal(rpm=1)
    assert (await rl.check(principal=caller, model=None, estimated_tokens=1)).allowed
    assert not (await rl.check(principal=caller, model=None, estimated_tokens=1)).allowed


async def test_unlimited_role_never_touches_redis(redis_client: Redis) -> None:
    rl = limiter(redis_client)  # admin: None by default, no tokens default here
    for _ in range(5):
        decision = await rl.check(principal=principal(Role.ADMIN), model="phi3", estimated_tokens=10**6)
        assert decision.allowed and decision.headers() == {}
    assert await redis_client.dbsize() == 0


async def test_retry_after_is_honest(redis_client: Redis) -> None:
    rl = limiter(redis_client, role_requests={"user": "2/second"})
    caller = principal()
    for _ in range(2):
        assert (await rl.check(principal=caller, model=None, estimated_tokens=1)).allowed
    refused = await rl.check(principal=caller, model=None, estimated_tokens=1)
    assert not refused.allowed and refused.retry_after is not None
    await asyncio.sleep(refused.retry_after)
    assert (await rl.check(principal=caller, model=None, estimated_tokens=1)).allowed


async def test_model_limit_is_independent_per_model(redis_client: Redis) -> None:
    rl = limiter(redis_client, role_requests={"user": "100/minute"}, model_requests={"mixtral": "2/minute"})
    caller = principal()
    for _ in range(2):
        assert (await rl.check(principal=caller, model="mixtral", estimated_tokens=1)).allowed
    refused = await rl.check(principal=caller, model="mixtral", estimated_tokens=1)
    assert not refused.allowed and refused.limited_by == "model_requests"
    assert refused.headers()["x-ratelimit-limit-requests"] == "2"
    # another model of the same key, and the same model for another key, still pass
    for _ in range(5):
        assert (await rl.check(principal=caller, model="phi3", estimated_tokens=1)).allowed
    assert (await rl.check(principal=principal(), model="mixtral", estimated_tokens=1)).allowed
    # the refused mixtral request was not counted against the key's 100/minute: 2 + 5 counted
    decision = await rl.check(principal=caller, model="phi3", estimated_tokens=1)
    assert decision.requests is not None and decision.requests.remaining == 100 - 8


async def test_tokens_limit_and_settle(redis_client: Redis) -> None:
    rl = limiter(redis_client, role_requests={"user": "100/minute"}, tokens_default="1000/minute")
    caller = principal()
    first = await rl.check(principal=caller, model="phi3", estimated_tokens=600)
    assert first.allowed and first.charged_tokens == 600
    assert first.headers()["x-ratelimit-remaining-tokens"] == "400"
    refused = await rl.check(principal=caller, model="phi3", estimated_tokens=600)
    assert not refused.allowed and refused.limited_by == "tokens"
    assert refused.error().error_type == "tokens"
    assert refused.headers()["x-ratelimit-remaining-tokens"] == "400"
    # the answer used only 100 tokens: settle gives 500 back, so the same request now passes
    await rl.settle(principal=caller, charged=first.charged_tokens, actual=100, window=first.tokens_window)
    second = await rl.check(principal=caller, model="phi3", estimated_tokens=600)
    assert second.allowed
    assert second.headers()["x-ratelimit-remaining-tokens"] == str(1000 - 100 - 600)
    # more than estimated: settle charges the difference
    await rl.settle(principal=caller, charged=600, actual=800, window=second.tokens_window)
    assert not (await rl.check(principal=caller, model="phi3", estimated_tokens=101)).allowed  # 900 + 101
    last = await rl.check(principal=caller, model="phi3", estimated_tokens=100)
    assert last.allowed and last.headers()["x-ratelimit-remaining-tokens"] == "0"
    # settle never takes a counter below zero, and a settle without a window corrects the current one
    await rl.settle(principal=caller, charged=10**6, actual=0)
    assert (await rl.check(principal=caller, model="phi3", estimated_tokens=1000)).allowed


async def test_settle_for_an_unlimited_key_does_nothing(redis_client: Redis) -> None:
    rl = limiter(redis_client)
    await rl.settle(principal=principal(Role.ADMIN), charged=10, actual=500)
    assert await redis_client.dbsize() == 0


async def test_refused_check_counts_nothing(redis_client: Redis) -> None:
    """All or nothing: a request refused by one limit counts against no other."""
    rl = limiter(
        redis_client,
        role_requests={"user": "10/minute"},
        tokens_default="100/minute",
        model_requests_default="1/minute",
    )
    caller = principal()
    assert (await rl.check(principal=caller, model="m", estimated_tokens=10)).allowed
    for _ in range(5):  # refused by the model limit: neither tokens nor the key's requests are counted
        refused = await rl.check(principal=caller, model="m", estimated_tokens=10)
        assert not refused.allowed and refused.limited_by == "model_requests"
    for _ in range(5):  # refused by tokens: the key's requests and the model's are not counted
        refused = await rl.check(principal=caller, model="n", estimated_tokens=95)
        assert not refused.allowed and refused.limited_by == "tokens"
    decision = await rl.check(principal=caller, model="n", estimated_tokens=10)
    assert decision.allowed
    assert decision.tokens is not None and decision.tokens.remaining == 100 - 20
    assert decision.requests is not None
    assert decision.requests.limit == 1 and decision.requests.remaining == 0  # the tighter one: model n, now used
    key_counter = await rl.check(principal=caller, model=None, estimated_tokens=0)
    assert key_counter.requests is not None and key_counter.requests.remaining == 10 - 3


async def test_request_larger_than_the_tokens_limit(redis_client: Redis) -> None:
    rl = limiter(redis_client, tokens_default="100/minute")
    refused = await rl.check(principal=principal(), model=None, estimated_tokens=101)
    assert not refused.allowed and refused.too_large
    assert "too large" in refused.error().message


async def test_concurrent_checks_in_one_process(redis_client: Redis) -> None:
    rl = limiter(redis_client, role_requests={"user": "50/minute"}, tokens_default="1000000/minute")
    caller = principal()
    decisions = await asyncio.gather(
        *(rl.check(principal=caller, model="phi3", estimated_tokens=7) for _ in range(200))
    )
    assert sum(d.allowed for d in decisions) == 50
    assert all(d.retry_after is not None and d.retry_after >= 1 for d in decisions if not d.allowed)
    # exactly the allowed requests' tokens were charged
    after = await rl.check(principal=caller, model=None, estimated_tokens=0)
    assert not after.allowed
    assert after.tokens is not None and after.tokens.remaining == 1_000_000 - 50 * 7


WORKER = """
import asyncio, sys, time, uuid
from gateway.redisconn import create_redis
from gateway.auth import Principal, Role
from gateway.ratelimit import LimitConfig, RateLimiter

async def main(url, key_id, count, start_at):
    redis = create_redis(url, timeout_ms=5000)
    rl = RateLimiter(redis, LimitConfig(role_requests={"user": "50/minute"}, tokens_default="100000/minute"))
    caller = Principal(key_id=uuid.UUID(key_id), name="k", role=Role.USER)
    await redis.ping()
    await asyncio.sleep(max(0.0, start_at - time.time()))
    decisions = await asyncio.gather(
        *(rl.check(principal=caller, model="phi3", estimated_tokens=3) for _ in range(count))
    )
    print(sum(d.allowed for d in decisions))
    await redis.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
"""


async def test_concurrent_checks_across_processes(redis_client: Redis, redis_url: str) -> None:
    """4 OS processes x 100 concurrent checks on one key with a limit of 50: exactly 50 pass in all."""
    key_id = str(uuid.uuid4())
    await clear_of_window_edge(redis_client, margin_s=8.0)
    start_at = time.time() + 1.5  # every process fires at the same moment, after its imports
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER,
            redis_url,
            key_id,
            "100",
            str(start_at),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        for _ in range(4)
    ]
    outputs = [await process.communicate() for process in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err.decode()
    allowed = [int(out.decode().strip()) for out, _ in outputs]
    assert sum(allowed) == 50, allowed
    rl = limiter(redis_client, role_requests={"user": "50/minute"}, tokens_default="100000/minute")
    after = await rl.check(
        principal=Principal(key_id=uuid.UUID(key_id), name="k", role=Role.USER), model=None, estimated_tokens=0
    )
    assert after.tokens is not None and after.tokens.remaining == 100000 - 50 * 3


async def test_script_reloads_after_redis_restart(redis_client: Redis, redis_server: object) -> None:
    """EVALSHA on a fresh server (empty script cache) falls back to loading the script."""
    rl = limiter(redis_client, role_requests={"user": "5/minute"})
    caller = principal()
    assert (await rl.check(principal=caller, model=None, estimated_tokens=1)).allowed
    await redis_client.script_flush()
    assert (await rl.check(principal=caller, model=None, estimated_tokens=1)).allowed


async def test_settlements_are_summed_and_written_together(redis_client: Redis) -> None:
    """SettleQueue: the corrections of many answers, for several keys, in one write per key, none lost."""
    rl = limiter(redis_client, role_requests={"user": "100/minute"}, tokens_default="1000/minute")
    queue = SettleQueue(rl, RedisPolicy(), delay_s=0.01)
    callers = [principal(), principal()]
    charged = [(c, await rl.check(principal=c, model="phi3", estimated_tokens=200)) for c in callers for _ in range(4)]
    for caller, decision in charged:
        queue.add(caller, decision, 50)  # each answer used 50 of its 200
    assert queue.pending == 2  # one correction per counter and window: -600 for each key
    await asyncio.sleep(0.2)
    assert queue.pending == 0 and queue.lost == 0
    for caller in callers:
        after = await rl.check(principal=caller, model="phi3", estimated_tokens=1)
        assert after.headers()["x-ratelimit-remaining-tokens"] == str(1000 - 4 * 50 - 1)


async def test_drain_writes_what_is_queued_and_a_failed_write_is_counted(redis_client: Redis) -> None:
    rl = limiter(redis_client, role_requests={"user": "100/minute"}, tokens_default="1000/minute")
    caller = principal()
    queue = SettleQueue(rl, RedisPolicy(), delay_s=60)
    decision = await rl.check(principal=caller, model="phi3", estimated_tokens=500)
    queue.add(caller, decision, 100)
    await queue.drain()  # at shutdown: written now, not after the delay
    after = await rl.check(principal=caller, model="phi3", estimated_tokens=1)
    assert after.headers()["x-ratelimit-remaining-tokens"] == str(1000 - 100 - 1)

    down = Redis(port=1, socket_connect_timeout=0.2)  # nothing listens there
    broken = SettleQueue(limiter(down, tokens_default="1000/minute"), RedisPolicy(), delay_s=60)
    broken.add(caller, decision, 100)
    await broken.drain()
    assert broken.lost == 1 and broken.pending == 0
    await down.aclose()
