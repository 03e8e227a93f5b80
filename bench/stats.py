"""Pure figures for the benchmarks: percentiles, ranges over runs, and verdicts against the goals."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Goal:
    """One target of issue 15: `name` keys the JSON, `label` is what the report prints."""

    name: str
    label: str
    limit: float
    unit: str
    higher_is_better: bool = False

    def met(self, value: float) -> bool:
        return value >= self.limit if self.higher_is_better else value <= self.limit

    def text(self) -> str:
        return f"{'>=' if self.higher_is_better else '<='} {self.limit:g} {self.unit}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A goal against the values of all runs: PASS when the median run meets it (the machine is shared,
    so one slow run should not decide, nor one lucky run); `met` counts the runs that did."""

    goal: Goal
    values: tuple[float, ...]
    low: float
    high: float
    median: float
    met: int
    passed: bool

    @property
    def word(self) -> str:
        return "PASS" if self.passed else "MISS"


# Issue 15's goals for the uncached path with everything on (one worker on one core unless said otherwise).
OVERHEAD_GOALS = (
    Goal("added_p50_ms", "added latency p50, c=1", 1.0, "ms"),
    Goal("added_p99_ms", "added latency p99, c=1", 5.0, "ms"),
    Goal("gateway_rps", "gateway throughput, c=32", 2000.0, "req/s", higher_is_better=True),
    Goal("gateway_cpu_ms", "gateway CPU per request, c=32", 0.45, "ms"),
    Goal("added_first_chunk_p50_ms", "stream: added first chunk p50", 1.0, "ms"),
    Goal("rss_mib", "gateway RSS after the load", 150.0, "MiB"),
)
WORKERS_GOAL = Goal("workers_ratio", "2 workers / 1 worker, c=32", 1.8, "x", higher_is_better=True)
END_TO_END_GOALS = (
    Goal("latency_ratio", "gateway / direct latency p50, c=8", 1.05, "x"),
    Goal("throughput_ratio", "gateway / direct throughput, c=8", 0.95, "x", higher_is_better=True),
)


def percentiles(samples: Sequence[float], scale: float = 1e6) -> dict[str, float]:
    """p50, p90 and p99 (nearest rank, no interpolation) of `samples` divided by `scale`, rounded to 3 places."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    at = {q: ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] / scale for q in (50, 90, 99)}
    return {f"p{q}": round(v, 3) for q, v in at.items()}


def judge(goal: Goal, values: Sequence[float]) -> Verdict:
    """The range of `values` (one per run) and whether the goal is met."""
    if not values:
        raise ValueError(f"no runs for {goal.name}")
    median = statistics.median(values)
    met = sum(1 for v in values if goal.met(v))
    return Verdict(goal, tuple(values), min(values), max(values), median, met, goal.met(median))


def span_text(low: float, high: float, digits: int = 2) -> str:
    """`low-high`, or one number when the runs agree to the digits shown."""
    a, b = f"{low:,.{digits}f}", f"{high:,.{digits}f}"
    return a if a == b else f"{a}-{b}"


def verdict_line(v: Verdict) -> str:
    """One report line: label, goal, range over the runs, verdict and how many runs met it."""
    digits = 0 if v.goal.unit == "req/s" else 2
    measured = span_text(v.low, v.high, digits)
    runs = len(v.values)
    return f"  {v.goal.label:34} goal {v.goal.text():15} measured {measured:>17}  {v.word}  ({v.met}/{runs} runs met)"
