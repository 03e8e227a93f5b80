"""Background health probing of every replica: GET /health takes it out of or back into rotation, and GET
/metrics reads vLLM's load figures for the balancer. Probes run concurrently, each bounded by a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

import aiohttp

from .replica import LoadReport, Replica

log = logging.getLogger(__name__)

# vLLM's gauges (one series per engine; summed). Other names in its /metrics are ignored.
_WAITING = "vllm:num_requests_waiting"
_RUNNING = "vllm:num_requests_running"
_KV_USAGE = "vllm:kv_cache_usage_perc"
# Timed-out health probes in a row, with no request to the replica succeeding meanwhile, that take it out.
SILENT_PROBES_BEFORE_OUT = 3
_TIMED_OUT = "health probe timed out"


def parse_load(text: str) -> LoadReport | None:
    """vLLM's load figures from a Prometheus text exposition; None when it has none (not a vLLM server)."""
    sums = {_WAITING: 0.0, _RUNNING: 0.0, _KV_USAGE: 0.0}
    found = False
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name, _, rest = line.partition("{") if "{" in line else line.partition(" ")
        if name not in sums:
            continue
        try:
            value = float(rest.rsplit(" ", 1)[-1])
        except ValueError:
            continue
        found = True
        sums[name] = max(sums[name], value) if name == _KV_USAGE else sums[name] + value
    if not found:
        return None
    return LoadReport(
        waiting=sums[_WAITING], running=sums[_RUNNING], kv_cache_usage=sums[_KV_USAGE], at=time.monotonic()
    )


class HealthProber:
    """Probes every replica each `interval_s`; `probe_all()` may also be called on demand (readiness)."""

    def __init__(self, replicas: Sequence[Replica], *, interval_s: float, timeout_s: float) -> None:
        self._replicas = list(replicas)
        self._interval = interval_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    def use(self, replicas: Sequence[Replica]) -> None:
        """Probe these replicas from now on (a config reload added or removed some)."""
        self._replicas = list(replicas)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(replica) for replica in self._replicas))

    async def probe(self, replica: Replica) -> None:
        """One probe; never raises (a failure is the replica's state, not an error of the prober)."""
        if replica.session is None or replica.session.closed:  # closed: removed by a config reload
            return
        started = time.perf_counter()
        try:
            async with replica.session.get("/health", timeout=self._timeout) as response:
                await response.read()
                healthy = response.status == 200
                error = None if healthy else f"health answered {response.status}"
        except (TimeoutError, aiohttp.ServerTimeoutError):
            healthy, error = self._timed_out(replica)
        except (aiohttp.ClientError, OSError) as exc:
            healthy, error = False, f"health probe failed: {type(exc).__name__}"
        if error != _TIMED_OUT:
            replica.silent_probes = 0
        replica.successes_at_probe = replica.breaker.successes
        replica.last_probe_ms = round((time.perf_counter() - started) * 1000, 2)
        if healthy != replica.healthy:
            models = ",".join(replica.models)
            if healthy:
                log.warning("replica %s of %s is back in rotation", replica.label, models)
            else:
                log.warning("replica %s of %s is out of rotation: %s", replica.label, models, error)
        replica.mark(healthy=healthy, error=error)
        if healthy and error is None:  # after a timed-out probe, /metrics would only time out as well
            await self._read_load(replica)
        replica.publish()  # the breaker's state moves with time (open -> half-open): keep the gauges current

    @staticmethod
    def _timed_out(replica: Replica) -> tuple[bool, str]:
        """A slow probe is not a dead server: a CPU model server busy with requests may answer /health late. It
        leaves rotation only after SILENT_PROBES_BEFORE_OUT timeouts in a row during which no request to it
        succeeded either; a replica already out stays out until a probe answers."""
        if replica.breaker.successes != replica.successes_at_probe:
            replica.silent_probes = 0  # it answered requests since the last probe: busy
        else:
            replica.silent_probes += 1
        healthy = replica.healthy and replica.silent_probes < SILENT_PROBES_BEFORE_OUT
        return healthy, _TIMED_OUT

    async def _read_load(self, replica: Replica) -> None:
        assert replica.session is not None
        ours_before = replica.outstanding
        try:
            async with replica.session.get("/metrics", timeout=self._timeout) as response:
                if response.status != 200:
                    return
                report = parse_load(await response.text())
        except (TimeoutError, aiohttp.ClientError, OSError, UnicodeDecodeError):
            return
        if report is not None:
            # This worker's share of vLLM's figures as they were read (the admission gate subtracts it to see the
            # other workers' and gateways' load). The figures were taken somewhere between the request and its
            # answer: the larger of this worker's counts then, so that its own requests never pass for others'.
            report.ours = max(ours_before, replica.outstanding)
            replica.load = report

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            await self.probe_all()
            await asyncio.sleep(max(0.0, self._interval - (time.monotonic() - started)))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HealthProber]:
        """Probe in the background for the lifetime of the context (the app's lifespan)."""
        task = asyncio.create_task(self._loop(), name="replica-health-prober")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
