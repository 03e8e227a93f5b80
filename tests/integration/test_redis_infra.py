"""The Redis infrastructure on a real server: LocalRedis, the failure policy against a stopped and a hanging
Redis, and key revocation through pub/sub across two listeners ("workers"), Redis restarts included."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis

from gateway.redisconn import RedisPolicy, RedisUnavailable, create_redis
from gateway.revocation import RevocationListener, publish_revocation
from services.redis import LocalRedis
from tests.conftest import free_port


@pytest.fixture
def own_redis(tmp_path) -> Iterator[LocalRedis]:  # type: ignore[no-untyped-def]
    """A server of this test's own, free to stop, pause and restart."""
    server = LocalRedis(free_port(), data_dir=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_local_redis_start_stop_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = LocalRedis(free_port(), data_dir=tmp_path)
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    assert "--save" in server.command() and "--appendonly" in server.command()
    started = time.monotonic()
    server.start()
    try:
        assert time.monotonic() - started < 1.0
        assert server.is_ready()
        server.restart()
        assert server.is_ready()
        server.stop()
        assert not server.is_ready()
        assert server.pid is None
        server.start()
        assert server.is_ready()
    finally:
        server.stop()


async def test_redis_client_fixture_is_flushed(redis_client: Redis) -> None:
    assert await redis_client.dbsize() == 0
    await redis_client.set("citadel:test:k", "v")
    assert await redis_client.get("citadel:test:k") == b"v"


async def test_data_is_gone_after_restart(own_redis: LocalRedis) -> None:
    client = create_redis(own_redis.url, timeout_ms=1000)
    try:
        await client.set("k", "v")
        own_redis.restart()
        assert await client.get("k") is None  # no persistence; the pool reconnected by itself
    finally:
        await client.aclose()


async def test_policy_against_stopped_redis_costs_milliseconds(own_redis: LocalRedis) -> None:
    client = create_redis(own_redis.url, timeout_ms=100)
    policy = RedisPolicy(cooldown_s=0.25)
    try:
        assert await policy.call("limits", lambda: client.incr("n"), fallback=-1) == 1
        own_redis.stop()
        durations = []
        for _ in range(200):
            started = time.perf_counter()
            assert await policy.call("limits", lambda: client.incr("n"), fallback=-1) == -1
            durations.append(time.perf_counter() - started)
            await asyncio.sleep(0.002)
        assert max(durations) < 0.1, max(durations)  # refused at once; mostly skipped by the circuit
        assert sum(durations) / len(durations) < 0.01
        assert policy.total("limits") == 200
        assert sum(n for (_, kind), n in policy.events.items() if kind == "circuit_open") > 100
        # Redis comes back: after the cool-down calls reach it again.
        own_redis.start()
        await asyncio.sleep(0.3)
        assert await policy.call("limits", lambda: client.incr("n"), fallback=-1) == 1
        assert not policy.circuit_open
    finally:
        await client.aclose()


async def test_policy_against_hanging_redis_times_out_in_about_the_timeout(own_redis: LocalRedis) -> None:
    client = create_redis(own_redis.url, timeout_ms=100)
    policy = RedisPolicy(cooldown_s=0.25, deadline_s=0.3)
    assert await client.ping()
    assert own_redis.pid is not None
    os.kill(own_redis.pid, signal.SIGSTOP)
    try:
        started = time.perf_counter()
        assert await policy.call("cache", lambda: client.get("k"), fallback=None) is None
        elapsed = time.perf_counter() - started
        assert 0.05 < elapsed < 0.5, elapsed
        assert policy.events[("cache", "TimeoutError")] == 1
        # Meanwhile the circuit answers at once.
        started = time.perf_counter()
        assert await policy.call("cache", lambda: client.get("k"), fallback=None) is None
        assert time.perf_counter() - started < 0.01
        # A new connection (connect succeeds into the stopped server's backlog) also times out in time.
        other = create_redis(own_redis.url, timeout_ms=100)
        started = time.perf_counter()
        assert await RedisPolicy().call("cache", lambda: other.get("k"), fallback="miss") == "miss"
        assert time.perf_counter() - started < 0.5
        await other.aclose()
    finally:
        os.kill(own_redis.pid, signal.SIGCONT)
    await asyncio.sleep(0.3)
    assert await policy.call("cache", lambda: client.set("k", "v"), fallback=None) is True
    await client.aclose()


async def test_fail_closed_raises_503_against_stopped_redis(own_redis: LocalRedis) -> None:
    client = create_redis(own_redis.url, timeout_ms=100)
    policy = RedisPolicy({"limits": "closed"})
    own_redis.stop()
    try:
        with pytest.raises(RedisUnavailable) as info:
            await policy.call("limits", lambda: client.incr("n"), fallback=True)
        assert info.value.status_code == 503 and info.value.code == "redis_unavailable"
        assert await policy.call("cache", lambda: client.get("k"), fallback="miss") == "miss"
    finally:
        await client.aclose()


class Worker:
    """What one gateway worker does with revocations: a key cache that forgets."""

    def __init__(self) -> None:
        self.forgotten: list[uuid.UUID] = []
        self.forget_all_calls = 0
        self.got = asyncio.Event()

    def forget(self, key_id: uuid.UUID) -> None:
        self.forgotten.append(key_id)
        self.got.set()

    async def forget_all(self) -> None:
        self.forget_all_calls += 1


async def wait_for(condition, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_revocation_reaches_every_worker(redis_url: str) -> None:
    workers = [Worker(), Worker()]
    clients = [create_redis(redis_url, timeout_ms=100) for _ in range(3)]
    listeners = [RevocationListener(c, w.forget, w.forget_all) for c, w in zip(clients, workers, strict=False)]
    try:
        for listener in listeners:
            await listener.start()
        assert all([await listener.wait_subscribed(2.0) for listener in listeners])
        key_id = uuid.uuid4()
        started = time.monotonic()
        assert await publish_revocation(clients[2], key_id) == 2
        assert await wait_for(lambda: all(w.got.is_set() for w in workers), 1.0)
        assert time.monotonic() - started < 1.0
        assert all(w.forgotten == [key_id] for w in workers)
        await clients[2].publish("citadel:keys:revoked", "not-a-uuid")  # ignored, the listener goes on
        second = uuid.uuid4()
        await publish_revocation(clients[2], second)
        assert await wait_for(lambda: all(w.forgotten == [key_id, second] for w in workers), 1.0)
    finally:
        for listener in listeners:
            await listener.stop()
        for client in clients:
            await client.aclose()


async def test_listener_reconnects_after_restart_and_forgets_all(own_redis: LocalRedis) -> None:
    worker = Worker()
    client = create_redis(own_redis.url, timeout_ms=100)
    publisher = create_redis(own_redis.url, timeout_ms=500)
    listener = RevocationListener(client, worker.forget, worker.forget_all, backoff_max_s=0.2, ping_interval_s=0.2)
    async with listener:
        assert await listener.wait_subscribed(2.0)
        before = worker.forget_all_calls
        own_redis.stop()
        assert await wait_for(lambda: not listener.subscribed.is_set(), 2.0)
        # Published while the listener is away: lost, which is why it forgets everything on reconnect.
        assert await publish_revocation(publisher, uuid.uuid4()) is None
        await asyncio.sleep(0.3)
        own_redis.start()
        assert await listener.wait_subscribed(3.0)
        assert worker.forget_all_calls == before + 1
        assert listener.disconnects == 1
        key_id = uuid.uuid4()
        assert await publish_revocation(publisher, key_id) == 1
        assert await wait_for(lambda: worker.forgotten == [key_id], 1.0)
        # A hanging Redis: the listener notices the silence by its own PINGs and resubscribes after SIGCONT.
        assert own_redis.pid is not None
        os.kill(own_redis.pid, signal.SIGSTOP)
        try:
            assert await wait_for(lambda: not listener.subscribed.is_set(), 3.0)
        finally:
            os.kill(own_redis.pid, signal.SIGCONT)
        assert await listener.wait_subscribed(3.0)
        assert worker.forget_all_calls == before + 2
        third = uuid.uuid4()
        assert await publish_revocation(publisher, third) == 1
        assert await wait_for(lambda: worker.forgotten == [key_id, third], 1.0)
    await client.aclose()
    await publisher.aclose()


async def test_listener_started_without_redis_keeps_trying(tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = LocalRedis(free_port(), data_dir=tmp_path)
    worker = Worker()
    client = create_redis(server.url, timeout_ms=100)
    listener = RevocationListener(client, worker.forget, worker.forget_all, backoff_max_s=0.2)
    try:
        async with listener:
            assert not await listener.wait_subscribed(0.3)
            server.start()
            assert await listener.wait_subscribed(2.0)
            assert worker.forget_all_calls == 1
    finally:
        server.stop()
        await client.aclose()


async def test_policy_under_load_while_redis_stops_and_starts(own_redis: LocalRedis) -> None:
    """Concurrent callers while Redis goes away and comes back: every call returns (result or fallback) in
    milliseconds, nothing raises, and calls reach Redis again after it is back."""
    client = create_redis(own_redis.url, timeout_ms=100, max_connections=16)
    policy = RedisPolicy(cooldown_s=0.25, deadline_s=0.3)
    results: list[int] = []
    slowest = 0.0
    stop = asyncio.Event()

    async def caller() -> None:
        nonlocal slowest
        while not stop.is_set():
            started = time.perf_counter()
            results.append(await policy.call("limits", lambda: client.incr("n"), fallback=-1))
            slowest = max(slowest, time.perf_counter() - started)
            await asyncio.sleep(0.001)

    tasks = [asyncio.create_task(caller()) for _ in range(32)]
    try:
        await asyncio.sleep(0.2)
        own_redis.stop()
        await asyncio.sleep(0.5)
        own_redis.start()
        await asyncio.sleep(0.6)
        served_before = results.count(-1)
        served = len(results)
        await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.gather(*tasks)  # a task that raised fails the test here
        await client.aclose()
    assert served_before > 0  # fallbacks happened while Redis was away
    assert results[served:] and all(r > 0 for r in results[served:])  # and Redis serves again
    assert slowest < 0.5, slowest
