"""Routing policy pieces without a network: the circuit breaker's states, the balancer's choice, vLLM load
parsing, retry backoff, and the failure classification that decides what may be retried."""

from __future__ import annotations

import random

import aiohttp
import pytest

from gateway.catalog import ModelSpec
from gateway.upstream.balancer import choose
from gateway.upstream.breaker import BreakerState, CircuitBreaker
from gateway.upstream.failures import classify, status_failure
from gateway.upstream.pool import Exchange, RetryPolicy
from gateway.upstream.prober import parse_load
from gateway.upstream.replica import LoadReport, Replica
from tests.support.catalogs import chat_entry


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, cooldown_s=1, max_cooldown_s=4, clock=clock)


def test_breaker_opens_after_consecutive_failures_only() -> None:
    cb = breaker(Clock())
    for _ in range(2):
        cb.record_failure()
    cb.record_success()  # the count is of consecutive failures
    cb.record_failure()
    cb.record_failure()
    assert cb.state is BreakerState.CLOSED and cb.allow()
    cb.record_failure()
    assert cb.state is BreakerState.OPEN and not cb.allow()


def test_breaker_half_opens_for_one_trial_and_its_cooldown_grows_while_trials_fail() -> None:
    clock = Clock()
    cb = breaker(clock)
    for _ in range(3):
        cb.record_failure()
    cooldowns = []
    for _ in range(4):
        clock.now += cb.cooldown_s
        assert cb.state is BreakerState.HALF_OPEN
        assert cb.acquire() and not cb.allow(), "one trial at a time"
        cooldowns.append(cb.cooldown_s)
        cb.record_failure()
        assert cb.state is BreakerState.OPEN
    assert cooldowns == [1, 2, 4, 4], "doubles up to the maximum"
    clock.now += cb.cooldown_s
    assert cb.acquire()
    cb.record_success()
    assert cb.state is BreakerState.CLOSED and cb.cooldown_s == 1


def test_breaker_frees_the_trial_when_the_client_left() -> None:
    clock = Clock()
    cb = breaker(clock)
    for _ in range(3):
        cb.record_failure()
    clock.now += 1
    assert cb.acquire()
    cb.release()
    assert cb.allow()


def replica(url: str, *, outstanding: int = 0, load: LoadReport | None = None) -> Replica:
    r = Replica(url=url, models=["m"], breaker=breaker(Clock()), outstanding=outstanding)
    if load is not None:
        r.load = load
    return r


def test_balancer_prefers_fewer_requests_in_flight_and_shares_ties() -> None:
    busy, idle = replica("http://a:1", outstanding=3), replica("http://b:1", outstanding=1)
    assert choose([busy, idle], tried=[], fresh_s=10) is idle
    a, b = replica("http://a:1"), replica("http://b:1")
    picks = {choose([a, b], tried=[], fresh_s=10, rng=random.Random(seed)).url for seed in range(20)}
    assert picks == {"http://a:1", "http://b:1"}


def test_balancer_uses_fresh_vllm_load_and_ignores_stale_figures() -> None:
    import time

    queued = replica("http://a:1", load=LoadReport(waiting=5, at=time.monotonic()))
    full = replica("http://b:1", load=LoadReport(kv_cache_usage=0.97, at=time.monotonic()))
    calm = replica("http://c:1", outstanding=2)
    assert choose([queued, full, calm], tried=[], fresh_s=10) is calm
    stale = replica("http://a:1", load=LoadReport(waiting=50, at=time.monotonic() - 60))
    assert choose([stale, calm], tried=[], fresh_s=10) is stale


def test_balancer_skips_replicas_out_of_rotation_and_prefers_untried_ones() -> None:
    down, open_, tried, fresh = (replica(f"http://{n}:1") for n in "abcd")
    down.healthy = False
    for _ in range(3):
        open_.breaker.record_failure()
    assert choose([down, open_, tried, fresh], tried=[tried], fresh_s=10) is fresh
    assert choose([down, open_, tried], tried=[tried], fresh_s=10) is tried, "retry the only one left"
    assert choose([down, open_], tried=[], fresh_s=10) is None


def test_parse_load_reads_vllm_gauges() -> None:
    text = (
        "# HELP vllm:num_requests_waiting Number of requests waiting.\n"
        'vllm:num_requests_waiting{engine="0",model_name="m"} 2.0\n'
        'vllm:num_requests_waiting{engine="1",model_name="m"} 1.0\n'
        'vllm:num_requests_running{engine="0",model_name="m"} 4.0\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75\n'
        'vllm:prompt_tokens_total{engine="0",model_name="m"} 99.0\n'
    )
    report = parse_load(text)
    assert report is not None
    assert (report.waiting, report.running, report.kv_cache_usage) == (3.0, 4.0, 0.75)
    assert parse_load("process_cpu_seconds_total 1.0\n") is None


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    policy = RetryPolicy(max_attempts=5, backoff_base_s=0.1, backoff_max_s=0.3, budget_s=5)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.3)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= ceiling
        assert max(delays) > ceiling * 0.8, "jitter spans the whole range"


SPEC = ModelSpec(name="m", **chat_entry("http://x:1", upstream_model="served"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "kind", "retry"),
    [
        (aiohttp.ServerDisconnectedError(), "broken", "reset"),
        (TimeoutError(), "timeout", None),
        (aiohttp.SocketTimeoutError(), "timeout", None),
        (aiohttp.ConnectionTimeoutError(), "connect", "connect"),
    ],
)
def test_only_failures_before_the_server_acted_are_retried(exc: Exception, kind: str, retry: str | None) -> None:
    failure = classify(exc, SPEC)
    assert (failure.kind, failure.retry_reason) == (kind, retry)
    assert "'m'" in failure.error.message


@pytest.mark.parametrize(
    ("status", "retry"), [(500, None), (502, "status_502"), (503, "status_503"), (504, "status_504")]
)
def test_only_502_503_504_answers_are_retried(status: int, retry: str | None) -> None:
    failure = status_failure(SPEC, status, b'{"error": {"message": "secret internals"}}')
    assert failure.retry_reason == retry
    assert "secret" not in failure.error.message


def test_a_4xx_answer_does_not_count_against_the_replica() -> None:
    failure = status_failure(SPEC, 400, b'{"error": {"message": "model `served` context is 2048"}}')
    assert failure.kind is None and failure.retry_reason is None
    assert "`m`" in failure.error.message


class ClosableResponse:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_an_exchange_dropped_without_an_outcome_frees_its_replica() -> None:
    """A stream whose client left before the relay started must not leave a phantom request in flight."""
    r = replica("http://a:1", outstanding=1)
    response = ClosableResponse()
    exchange = Exchange(response, r, body=b"")  # type: ignore[arg-type]
    del exchange
    assert r.outstanding == 0 and response.closed
