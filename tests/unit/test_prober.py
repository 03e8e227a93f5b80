"""A busy model server is not a dead one: health probes that time out take a replica out of rotation only after
several in a row with no request to it succeeding meanwhile; a refused connection takes it out at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest_asyncio
from aiohttp import web

from gateway.upstream.breaker import CircuitBreaker
from gateway.upstream.prober import SILENT_PROBES_BEFORE_OUT, HealthProber
from gateway.upstream.replica import Replica
from tests.support.ports import free_port


@pytest_asyncio.fixture
async def slow_server() -> AsyncIterator[str]:
    """A server whose /health answers only after the probe's timeout (0.05 s) has passed."""

    async def health(request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        return web.Response(text="")

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def replica_at(url: str) -> Replica:
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=1, max_cooldown_s=4)
    return Replica(url=url, models=["m"], breaker=breaker, session=aiohttp.ClientSession(base_url=url))


async def test_slow_probes_take_a_replica_out_only_after_several_without_a_served_request(slow_server: str) -> None:
    replica = await replica_at(slow_server)
    prober = HealthProber([replica], interval_s=60, timeout_s=0.05)
    try:
        for _ in range(SILENT_PROBES_BEFORE_OUT - 1):
            await prober.probe(replica)
            assert replica.healthy, "a slow probe alone must not take a replica out"
        replica.breaker.record_success()  # it served a request meanwhile: busy, not dead
        await prober.probe(replica)
        assert replica.healthy and replica.silent_probes == 0
        for _ in range(SILENT_PROBES_BEFORE_OUT):
            await prober.probe(replica)
        assert not replica.healthy and replica.last_probe_error == "health probe timed out"
        # Out, it stays out while probes keep timing out, even if a request got through (a half-open trial).
        replica.breaker.record_success()
        await prober.probe(replica)
        assert not replica.healthy
    finally:
        assert replica.session is not None
        await replica.session.close()


async def test_a_refused_connection_takes_a_replica_out_at_once() -> None:
    replica = await replica_at(f"http://127.0.0.1:{free_port()}")
    prober = HealthProber([replica], interval_s=60, timeout_s=0.5)
    try:
        await prober.probe(replica)
        assert not replica.healthy and (replica.last_probe_error or "").startswith("health probe failed")
    finally:
        assert replica.session is not None
        await replica.session.close()
