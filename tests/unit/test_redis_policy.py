"""RedisPolicy's own logic with fake operations and a fake clock: counting, logging once per interval,
the cool-down, fail open/closed. The same policy against a real Redis: tests/integration/test_redis_infra.py."""

from __future__ import annotations

import inspect
import logging

import pytest
import redis.exceptions

from gateway.redisconn import CIRCUIT_OPEN, RedisPolicy, RedisUnavailable
from tests.conftest import make_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def failing(exc: BaseException):  # type: ignore[no-untyped-def]
    calls = []

    async def operation() -> str:
        calls.append(1)
        raise exc

    operation.calls = calls  # type: ignore[attr-defined]
    return operation


async def ok() -> str:
    return "value"


def make_policy(clock: Clock, **modes: str) -> RedisPolicy:
    return RedisPolicy(modes, cooldown_s=0.25, log_interval_s=10.0, clock=clock)  # type: ignore[arg-type]


async def test_success_passes_result_through() -> None:
    policy = make_policy(Clock())
    assert await policy.call("limits", ok, fallback="fb") == "value"
    assert await policy.call("cache", ok(), fallback="fb") == "value"  # a bare awaitable works too
    assert policy.total() == 0


async def test_fail_open_returns_fallback_counts_and_trips_circuit() -> None:
    clock = Clock()
    policy = make_policy(clock)
    op = failing(redis.exceptions.ConnectionError("refused"))
    assert await policy.call("limits", op, fallback=True) is True
    assert policy.events[("limits", "ConnectionError")] == 1
    assert policy.circuit_open
    # During the cool-down Redis is not called at all.
    for _ in range(5):
        assert await policy.call("limits", op, fallback=True) is True
    assert len(op.calls) == 1
    assert policy.events[("limits", CIRCUIT_OPEN)] == 5
    # The circuit is shared: the cache group skips Redis too, and counts under its own group.
    assert await policy.call("cache", op, fallback=None) is None
    assert policy.events[("cache", CIRCUIT_OPEN)] == 1
    # After the cool-down one call probes; it fails, so the circuit opens again.
    clock.now += 0.3
    assert await policy.call("limits", op, fallback=True) is True
    assert len(op.calls) == 2
    assert policy.circuit_open
    # Then Redis is back: the probe succeeds and calls flow.
    clock.now += 0.3
    assert await policy.call("limits", ok, fallback="fb") == "value"
    assert not policy.circuit_open
    assert policy.total("limits") == 7


async def test_timeouts_are_counted_by_kind() -> None:
    policy = make_policy(Clock())
    await policy.call("cache", failing(redis.exceptions.TimeoutError()), fallback=None)
    policy._tripped = False  # look at the next kind without waiting out the cool-down
    await policy.call("cache", failing(TimeoutError()), fallback=None)
    assert policy.events[("cache", "TimeoutError")] == 2


async def test_skipped_coroutine_is_closed_not_leaked() -> None:
    clock = Clock()
    policy = make_policy(clock)
    await policy.call("limits", failing(ConnectionRefusedError()), fallback=True)
    coroutine = ok()
    assert await policy.call("limits", coroutine, fallback=True) is True
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED  # no "never awaited" warning


async def test_response_error_does_not_trip_the_circuit() -> None:
    policy = make_policy(Clock())
    op = failing(redis.exceptions.ResponseError("WRONGTYPE"))
    assert await policy.call("cache", op, fallback=None) is None
    assert not policy.circuit_open
    assert policy.events[("cache", "ResponseError")] == 1


async def test_unexpected_exception_never_escapes() -> None:
    policy = make_policy(Clock())
    assert await policy.call("limits", failing(KeyError("boom")), fallback=True) is True
    assert policy.events[("limits", "unexpected:KeyError")] == 1


async def test_fail_closed_raises_503() -> None:
    clock = Clock()
    policy = make_policy(clock, limits="closed")
    with pytest.raises(RedisUnavailable) as info:
        await policy.call("limits", failing(redis.exceptions.ConnectionError()), fallback=True)
    assert info.value.status_code == 503
    assert info.value.body()["error"] == {
        "message": info.value.message,
        "type": "service_unavailable",
        "param": None,
        "code": "redis_unavailable",
    }
    with pytest.raises(RedisUnavailable):  # during the cool-down as well
        await policy.call("limits", ok, fallback=True)
    # The cache group is still open.
    assert await policy.call("cache", ok, fallback=None) is None


async def test_logs_once_per_interval_per_group_without_values(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    policy = make_policy(clock)
    secret = "citadel:cache:sk-secret-key-value"
    op = failing(redis.exceptions.ConnectionError(f"Error on key {secret}"))
    caplog.set_level(logging.WARNING, logger="gateway.redisconn")
    for _ in range(50):
        await policy.call("limits", op, fallback=True)
        clock.now += 0.1  # 5 s in all: within one interval
    await policy.call("cache", op, fallback=None)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2  # one per group
    assert messages[0].startswith("redis unavailable for limits: ConnectionError; failing open; 1 events")
    assert messages[1].startswith("redis unavailable for cache:")
    clock.now += 10
    await policy.call("limits", op, fallback=True)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert "; 50 events in the last interval" in messages[2]  # the 49 unlogged ones and this one
    assert all(secret not in m for m in messages)


def test_from_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(
        tmp_path / "models.yaml", redis_fail_mode_cache="closed", redis_timeout_ms=50, redis_cooldown_ms=400
    )
    policy = RedisPolicy.from_settings(settings)
    assert policy.modes == {"limits": "open", "cache": "closed"}
    assert policy.cooldown_s == pytest.approx(0.4)
    assert policy.deadline_s == pytest.approx(0.15)
    with pytest.raises(ValueError):
        RedisPolicy({"limits": "sideways"})  # type: ignore[dict-item]


def test_settings_read_redis_url_from_env(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/0")
    assert make_settings(tmp_path / "models.yaml").redis_url == "redis://example:6379/0"
