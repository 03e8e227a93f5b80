"""The replicas of every model and how a request reaches one: pick (balancer), send with per-model timeouts,
retry safe failures with exponential backoff and jitter before anything has reached the client, and keep each
replica's breaker and in-flight count current.

A request's life here: `send()` returns an `Exchange` once the answer has started (non-streams: read whole;
streams: the first chunk read), so every failure up to that point can still be retried or become a clean
status code. The caller finishes the exchange when the stream ends; that is when the replica's breaker learns
the outcome and its in-flight count drops.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from ..catalog import Catalog, ModelSpec
from ..errors import UpstreamUnavailable
from ..observability.health_metrics import count_retry, count_upstream_error
from ..settings import Settings
from .balancer import choose
from .breaker import CircuitBreaker
from .failures import Failure, classify, status_failure
from .prober import HealthProber
from .replica import Replica

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """A model's effective timeouts: the first-byte bound, and aiohttp's form of the rest (made once)."""

    first_byte_s: float
    # sock_connect: connect; sock_read: any silence once the answer flows; total: the whole exchange.
    client: aiohttp.ClientTimeout


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    backoff_base_s: float
    backoff_max_s: float
    budget_s: float

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full jitter: uniform in [0, min(max, base * 2^(attempt-1))] (spreads retries of many clients)."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return (rng or random).uniform(0, ceiling)


class Exchange:
    """An answer that has started: the response, the replica it came from, and what was read already."""

    def __init__(self, response: aiohttp.ClientResponse, replica: Replica, *, body: bytes) -> None:
        self.response = response
        self.replica = replica
        # Non-streams: the whole body. Streams: the first chunk (the rest is still in `response`).
        self.body = body
        self._finished = False

    def finish(self, *, ok: bool | None) -> None:
        """Record the outcome once: True (served), False (the replica failed), None (the client went away)."""
        if self._finished:
            return
        self._finished = True
        self.replica.outstanding -= 1
        if ok is True:
            self.replica.breaker.record_success()
        elif ok is False:
            self.replica.breaker.record_failure()
        else:
            self.replica.breaker.release()

    def __del__(self) -> None:
        # Safety net: a stream whose client left before its first chunk was sent never runs the relay's
        # `finally`; without this the replica would keep a phantom request in flight (and the balancer would
        # avoid it for good) and the upstream connection would stay open until collected.
        if not self._finished:
            self.response.close()
            self.finish(ok=None)


class UpstreamPool:
    """Every replica of every model, with one pooled HTTP session each; built once in the app's lifespan."""

    def __init__(self, catalog: Catalog, settings: Settings) -> None:
        self._settings = settings
        self._replicas: dict[str, Replica] = {}
        self._by_model: dict[str, list[Replica]] = {}
        self._timeouts: dict[str, Timeouts] = {}
        for spec in catalog.models.values():
            self._by_model[spec.name] = [self._replica(url, spec.name) for url in spec.backends]
            first_byte = spec.timeouts.first_byte_s or settings.upstream_read_timeout_s
            self._timeouts[spec.name] = Timeouts(
                first_byte_s=first_byte,
                client=aiohttp.ClientTimeout(
                    total=spec.timeouts.total_s or settings.upstream_total_timeout_s,
                    sock_connect=spec.timeouts.connect_s or settings.upstream_connect_timeout_s,
                    sock_read=first_byte,
                ),
            )
        self.retry = RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            backoff_base_s=settings.retry_backoff_base_s,
            backoff_max_s=settings.retry_backoff_max_s,
            budget_s=settings.retry_budget_s,
        )
        self.prober = HealthProber(
            list(self._replicas.values()), interval_s=settings.health_interval_s, timeout_s=settings.health_timeout_s
        )
        # vLLM's load figures count while younger than three probe intervals.
        self._fresh_s = 3 * settings.health_interval_s

    def _replica(self, url: str, model: str) -> Replica:
        replica = self._replicas.get(url)
        if replica is None:
            breaker = CircuitBreaker(
                failure_threshold=self._settings.breaker_failure_threshold,
                cooldown_s=self._settings.breaker_cooldown_s,
                max_cooldown_s=self._settings.breaker_max_cooldown_s,
            )
            replica = self._replicas[url] = Replica(url=url, models=[], breaker=breaker)
            breaker.on_change = lambda _state, replica=replica: replica.publish()
        replica.models.append(model)
        return replica

    async def start(self) -> None:
        for replica in self._replicas.values():
            connector = aiohttp.TCPConnector(
                limit=self._settings.upstream_pool_size, ttl_dns_cache=300, enable_cleanup_closed=True
            )
            replica.session = aiohttp.ClientSession(
                base_url=replica.url,
                connector=connector,
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
            replica.publish()

    async def close(self) -> None:
        await asyncio.gather(*(r.session.close() for r in self._replicas.values() if r.session is not None))

    async def post(
        self,
        spec: ModelSpec,
        path: str,
        payload: bytes,
        *,
        request_id: str,
        stream: bool = False,
        trace: dict[str, Any] | None = None,
    ) -> Exchange:
        """Send a request to a replica of `spec`, retrying safe failures; raises the client's APIError.

        `trace` (the request's state) gets `retries`: how many times the request was sent again.
        """
        replicas = self._by_model[spec.name]
        timeouts = self._timeouts[spec.name]
        started = time.monotonic()
        tried: list[Replica] = []
        attempt = 0
        while True:
            attempt += 1
            replica = choose(replicas, tried=tried, fresh_s=self._fresh_s)
            if replica is None or not replica.breaker.acquire():
                raise UpstreamUnavailable(
                    f"The model '{spec.name}' is unavailable: none of its {len(replicas)} replica(s) is healthy. "
                    "Try again shortly.",
                    param="model",
                    code="model_unavailable",
                )
            tried.append(replica)
            if trace is not None:
                trace["retries"] = attempt - 1
            try:
                return await self._attempt(replica, spec, path, payload, request_id, stream, timeouts)
            except Failure as failure:
                delay = self.retry.delay(attempt)
                if (
                    failure.retry_reason is None
                    or attempt >= self.retry.max_attempts
                    or time.monotonic() - started + delay > self.retry.budget_s
                ):
                    raise failure.error from failure
                count_retry(spec.name, failure.retry_reason)
                log.info("retrying %s after %s (attempt %d)", spec.name, failure.retry_reason, attempt + 1)
                await asyncio.sleep(delay)

    async def _attempt(
        self,
        replica: Replica,
        spec: ModelSpec,
        path: str,
        payload: bytes,
        request_id: str,
        stream: bool,
        timeouts: Timeouts,
    ) -> Exchange:
        """One try on one replica, up to the first byte of the answer; raises Failure."""
        assert replica.session is not None
        replica.outstanding += 1
        response: aiohttp.ClientResponse | None = None
        exchange: Exchange | None = None
        try:
            async with asyncio.timeout(timeouts.first_byte_s):
                response = await replica.session.post(
                    path,
                    data=payload,
                    headers={"Content-Type": "application/json", "X-Request-ID": request_id},
                    timeout=timeouts.client,
                )
                if response.status >= 400:
                    raise status_failure(spec, response.status, await response.read())
                if stream:
                    first = await response.content.readany()
                    if not first:
                        raise aiohttp.ServerDisconnectedError("stream ended before its first event")
            if not stream:
                first = await response.read()
            exchange = Exchange(response, replica, body=first)
            if not stream:
                response.release()
                exchange.finish(ok=True)
            return exchange
        except asyncio.CancelledError:
            # The client went away while we waited: drop the upstream request (vLLM aborts it).
            if response is not None:
                response.close()
            replica.outstanding -= 1
            replica.breaker.release()
            raise
        except Exception as exc:
            if response is not None:
                response.close()
            failure = classify(exc, spec)
            replica.outstanding -= 1
            if failure.kind is None:
                replica.breaker.record_success()  # a 4xx: the replica is fine, the request is not
            else:
                replica.breaker.record_failure()
                count_upstream_error(spec.name, failure.kind)
            if failure.refused:
                replica.mark(healthy=False, error="connection refused")  # the prober puts it back when it answers
            raise failure from exc

    def describe(self, model: str) -> list[dict[str, Any]]:
        """Each replica's state for readiness: no host names (readiness is public), an index per model."""
        return [
            {
                "replica": index,
                "healthy": replica.healthy,
                "breaker": replica.breaker.state.value,
                "in_flight": replica.outstanding,
                "error": replica.last_probe_error,
                "latency_ms": replica.last_probe_ms,
            }
            for index, replica in enumerate(self._by_model[model])
        ]
