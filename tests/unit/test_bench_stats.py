"""The benchmark's pure figures: percentiles, ranges over runs, verdicts against the goals, the request it sends."""

from __future__ import annotations

import json

import pytest

from bench.load import Request
from bench.stats import OVERHEAD_GOALS, Goal, judge, percentiles, span_text, verdict_line

LOWER = Goal("added_p50_ms", "added latency p50", 1.0, "ms")
HIGHER = Goal("gateway_rps", "throughput", 2000.0, "req/s", higher_is_better=True)


def test_percentiles_are_nearest_rank_and_scaled() -> None:
    samples = [i * 1_000_000 for i in range(1, 101)]  # 1..100 ms in ns
    assert percentiles(samples) == {"p50": 51.0, "p90": 91.0, "p99": 100.0}
    assert percentiles([5_000], scale=1e3) == {"p50": 5.0, "p90": 5.0, "p99": 5.0}
    with pytest.raises(ValueError):
        percentiles([])


def test_a_goal_is_met_on_its_side_of_the_limit() -> None:
    assert LOWER.met(1.0) and not LOWER.met(1.01)
    assert HIGHER.met(2000.0) and not HIGHER.met(1999.9)
    assert LOWER.text() == "<= 1 ms" and HIGHER.text() == ">= 2000 req/s"


def test_the_verdict_follows_the_median_run_and_counts_the_runs_that_met_it() -> None:
    verdict = judge(LOWER, [0.8, 1.3, 0.9])
    assert (verdict.low, verdict.high, verdict.median, verdict.met, verdict.word) == (0.8, 1.3, 0.9, 2, "PASS")
    missed = judge(HIGHER, [1500.0, 2100.0, 1800.0])
    assert (missed.met, missed.word) == (1, "MISS")
    with pytest.raises(ValueError):
        judge(LOWER, [])


def test_ranges_collapse_when_the_runs_agree() -> None:
    assert span_text(0.8, 1.25) == "0.80-1.25"
    assert span_text(1.001, 1.004) == "1.00"
    assert span_text(1500, 2100, 0) == "1,500-2,100"


def test_the_report_line_shows_goal_range_and_verdict() -> None:
    line = verdict_line(judge(HIGHER, [1500.0, 2100.0, 1800.0]))
    assert ">= 2000 req/s" in line and "1,500-2,100" in line and "MISS" in line and "(1/3 runs met)" in line


def test_every_goal_of_the_issue_is_there() -> None:
    names = {goal.name for goal in OVERHEAD_GOALS}
    assert names == {
        "added_p50_ms",
        "added_p99_ms",
        "gateway_rps",
        "gateway_cpu_ms",
        "added_first_chunk_p50_ms",
        "rss_mib",
    }


def test_the_request_is_sampled_so_no_cache_answers_it() -> None:
    request = Request("bench", key="k")
    payload = json.loads(request.body())
    assert payload["temperature"] == 0.7 and payload["max_tokens"] == 16 and payload["stream"] is False
    assert json.loads(request.streaming().body())["stream"] is True
    raw = request.raw(8000)
    assert raw.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") and raw.endswith(request.body())
    assert f"Content-Length: {len(request.body())}".encode() in raw
