"""The replicas of every model and how a request reaches one: pick (balancer), send with per-model timeouts,
retry safe failures with exponential backoff and jitter before anything has reached the client, and keep each
replica's breaker and in-flight count current.

A request's life here: `send()` returns an `Exchange` once the answer has started (non-streams: read whole;
streams: the first chunk read), so every failure up to that point can still be retried or become a clean
status code. The caller finishes the exchange when the stream ends; that is when the replica's breaker learns
the outcome and its in-flight count drops.

A config reload (gateway/reload.py) calls `prepare()` then `apply()`: replicas new to the models file get a
session and a fresh breaker and are probed once before any request can reach them; replicas no longer in it
leave rotation at once and are closed once their requests in flight have finished (drained); the others keep
their breaker, health, load figures and connections.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from ..catalog import Catalog, ModelSpec
from ..catalog import Timeouts as ModelTimeouts
from ..context import RequestContext
from ..errors import ModelNotFound, UpstreamUnavailable
from ..observability.health_metrics import count_retry, count_upstream_error, forget_replica_state
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


def replica_layout(catalog: Catalog) -> dict[str, list[str]]:
    """Every replica URL of a catalogue and the models it serves, in the file's order."""
    layout: dict[str, list[str]] = {}
    for spec in catalog.models.values():
        for url in spec.backends:
            served = layout.setdefault(url, [])
            if spec.name not in served:
                served.append(spec.name)
    return layout


@dataclass(frozen=True, slots=True)
class ReplicaPlan:
    """What a reload does to the pool: replica URLs to add, to drain and close, and to keep as they are."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    kept: tuple[str, ...]
    layout: dict[str, list[str]]  # every replica URL of the new catalogue -> the models it serves


def plan_replicas(current: Collection[str], catalog: Catalog) -> ReplicaPlan:
    """Compare the pool's replica URLs with a new catalogue's (a replica is its URL)."""
    layout = replica_layout(catalog)
    return ReplicaPlan(
        added=tuple(url for url in layout if url not in current),
        removed=tuple(url for url in current if url not in layout),
        kept=tuple(url for url in layout if url in current),
        layout=layout,
    )


@dataclass(slots=True)
class PreparedReload:
    """A reload's new replicas, opened and probed but not yet in the pool (see UpstreamPool.prepare)."""

    catalog: Catalog
    plan: ReplicaPlan
    fresh: dict[str, Replica]


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
        self._replicas = {url: self._new_replica(url, models) for url, models in replica_layout(catalog).items()}
        self._by_model: dict[str, list[Replica]] = {}
        # Per model: the spec's timeouts and their effective form (a request made with another spec, from before a
        # reload, gets its own).
        self._timeouts: dict[str, tuple[ModelTimeouts, Timeouts]] = {}
        self._layout(catalog)
        # Replicas removed by a reload whose requests in flight have not finished yet.
        self._draining: dict[Replica, asyncio.Task[None]] = {}
        self.retry = RetryPolicy(
            max_attempts=settings.retry.max_attempts,
            backoff_base_s=settings.retry.backoff_base_s,
            backoff_max_s=settings.retry.backoff_max_s,
            budget_s=settings.retry.budget_s,
        )
        self.prober = HealthProber(
            list(self._replicas.values()), interval_s=settings.health.interval_s, timeout_s=settings.health.timeout_s
        )
        # vLLM's load figures count while younger than three probe intervals.
        self._fresh_s = 3 * settings.health.interval_s

    def _new_replica(self, url: str, models: list[str]) -> Replica:
        breaker = CircuitBreaker(
            failure_threshold=self._settings.breaker.failure_threshold,
            cooldown_s=self._settings.breaker.cooldown_s,
            max_cooldown_s=self._settings.breaker.max_cooldown_s,
        )
        replica = Replica(url=url, models=list(models), breaker=breaker)
        breaker.on_change = lambda _state, replica=replica: replica.publish()
        return replica

    def _layout(self, catalog: Catalog) -> None:
        """Point every model of `catalog` at its replicas (all in `self._replicas` already)."""
        models = catalog.models.values()
        self._by_model = {spec.name: [self._replicas[url] for url in spec.backends] for spec in models}
        self._timeouts = {spec.name: (spec.timeouts, self._effective_timeouts(spec)) for spec in models}

    def _effective_timeouts(self, spec: ModelSpec) -> Timeouts:
        settings = self._settings
        first_byte = spec.timeouts.first_byte_s or settings.upstream.read_timeout_s
        return Timeouts(
            first_byte_s=first_byte,
            client=aiohttp.ClientTimeout(
                total=spec.timeouts.total_s or settings.upstream.total_timeout_s,
                sock_connect=spec.timeouts.connect_s or settings.upstream.connect_timeout_s,
                sock_read=first_byte,
            ),
        )

    def _open(self, replica: Replica) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._settings.upstream.pool_size, ttl_dns_cache=300, enable_cleanup_closed=True
        )
        replica.session = aiohttp.ClientSession(
            base_url=replica.url,
            connector=connector,
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        replica.publish()

    async def start(self) -> None:
        for replica in self._replicas.values():
            self._open(replica)

    async def close(self) -> None:
        drains = list(self._draining.values())
        for task in drains:
            task.cancel()  # each closes its replica's session
        await asyncio.gather(*drains, return_exceptions=True)
        await asyncio.gather(*(r.session.close() for r in self._replicas.values() if r.session is not None))

    # --- config reload -------------------------------------------------------------------------------------------

    async def prepare(self, catalog: Catalog) -> PreparedReload:
        """Open and probe the replicas `catalog` adds; nothing a request sees changes until `apply()`."""
        plan = plan_replicas(self._replicas.keys(), catalog)
        fresh = {url: self._new_replica(url, plan.layout[url]) for url in plan.added}
        for replica in fresh.values():
            self._open(replica)
        try:
            # A dead new replica starts out of rotation (the prober's loop puts it in when it answers).
            await asyncio.gather(*(self.prober.probe(replica) for replica in fresh.values()))
        except BaseException:
            await asyncio.gather(*(r.session.close() for r in fresh.values() if r.session is not None))
            raise
        return PreparedReload(catalog=catalog, plan=plan, fresh=fresh)

    def apply(self, prepared: PreparedReload) -> list[Replica]:
        """Swap the new layout in (no await: atomic for requests); returns the replicas being drained."""
        plan = prepared.plan
        for url in plan.kept:
            replica = self._replicas[url]
            gone = set(replica.models) - set(plan.layout[url])
            replica.models = list(plan.layout[url])
            for model in gone:
                forget_replica_state(model, replica.label)
            replica.publish()
        removed = [self._replicas[url] for url in plan.removed]
        # No exchange outlives the total timeout of its model (as it was when the exchange began) and its retries.
        limits = {replica: self._longest_exchange_s(replica) for replica in removed}
        self._replicas = {url: self._replicas.get(url) or prepared.fresh[url] for url in plan.layout}
        self._layout(prepared.catalog)
        self.prober.use(list(self._replicas.values()))
        for replica in removed:
            for model in replica.models:
                forget_replica_state(model, replica.label)
            replica.models = []  # out of the metrics: what it still does (its requests in flight) publishes nothing
            self._draining[replica] = asyncio.create_task(
                self._drain(replica, limits[replica]), name=f"drain-replica-{replica.label}"
            )
        return removed

    def _longest_exchange_s(self, replica: Replica) -> float:
        totals = [self._timeouts[model][1].client.total for model in replica.models if model in self._timeouts]
        return max([self._settings.upstream.total_timeout_s, *(t for t in totals if t)]) + self.retry.budget_s

    async def _drain(self, replica: Replica, limit_s: float) -> None:
        """Close a removed replica's session once its requests in flight have finished (or could no longer run)."""
        deadline = time.monotonic() + limit_s
        try:
            # A poll: the count drops in several places (a finished exchange, a failed or cancelled attempt).
            while replica.outstanding > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            if replica.outstanding > 0:
                log.warning("replica %s: closed with %d requests still in flight", replica.label, replica.outstanding)
            else:
                log.info("replica %s drained and closed", replica.label)
        finally:
            self._draining.pop(replica, None)
            if replica.session is not None:
                await replica.session.close()

    @property
    def draining(self) -> list[Replica]:
        """Replicas removed by a reload and still finishing their requests in flight."""
        return list(self._draining)

    async def post(
        self,
        spec: ModelSpec,
        path: str,
        payload: bytes,
        *,
        request_id: str,
        stream: bool = False,
        trace: RequestContext | None = None,
    ) -> Exchange:
        """Send a request to a replica of `spec`, retrying safe failures; raises the client's APIError.

        `trace` (the request's context) gets `retries`: how many times the request was sent again.
        """
        timeouts = self._timeouts_for(spec)
        started = time.monotonic()
        tried: list[Replica] = []
        attempt = 0
        while True:
            attempt += 1
            # Read at every attempt: a config reload may have added or removed replicas (or the model) meanwhile.
            replicas = self._by_model.get(spec.name)
            if replicas is None:
                raise ModelNotFound(spec.name)
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
                trace.retries = attempt - 1
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

    def _timeouts_for(self, spec: ModelSpec) -> Timeouts:
        """The spec's own timeouts: those of the catalogue in force, or (a request from before a reload) its own."""
        known = self._timeouts.get(spec.name)
        if known is not None and known[0] is spec.timeouts:
            return known[1]
        return self._effective_timeouts(spec)

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

    def replicas_of(self, model: str) -> list[Replica]:
        """The replicas serving `model` now (empty for a model the catalogue no longer has)."""
        return self._by_model.get(model, [])

    def replicas_at(self, urls: tuple[str, ...]) -> list[Replica]:
        """The pool's replicas at these URLs (those a reload removed are left out)."""
        return [self._replicas[url] for url in urls if url in self._replicas]

    @property
    def fresh_s(self) -> float:
        """How long vLLM's load figures of a replica count after they were read."""
        return self._fresh_s

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
            for index, replica in enumerate(self._by_model.get(model, ()))
        ]
