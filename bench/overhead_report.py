"""The overhead benchmark's printed report: the goals with their ranges over the runs, then the reference lines."""

from __future__ import annotations

from typing import Any

from bench.stats import Verdict, span_text, verdict_line


def column(runs: list[dict[str, Any]], *path: str) -> list[float]:
    """One figure from every run, e.g. column(runs, "latency", "json", "total", "gateway", "p50")."""
    values = []
    for run in runs:
        node: Any = run
        for step in path:
            node = node[step]
        values.append(float(node))
    return values


def spread(runs: list[dict[str, Any]], *path: str, digits: int = 2) -> str:
    values = column(runs, *path)
    return span_text(min(values), max(values), digits)


def print_report(result: dict[str, Any], verdicts: list[Verdict]) -> None:
    runs, s = result["runs"], result["settings"]
    print("\nEnvironment: " + "; ".join(f"{k} {v}" for k, v in result["environment"].items()))
    print("Calibration: " + "; ".join(f"{k} {v}" for k, v in result["calibration"].items()))
    loads = ", ".join(f"{r['load_average'][0]:.2f}" for r in runs)
    print(f"Load average (1 min) at the start of each run: {loads}")
    print(f"Audit: {result['audit']}")
    print(
        f"\nGOALS: uncached path, everything on; range over {len(runs)} runs (min-max); PASS = the median run meets it"
    )
    for verdict in verdicts:
        print(verdict_line(verdict))
    print(f"\nReference figures, same runs (ranges; latency at c=1 over {s['requests']} requests, ms)")
    for label, mode, metric in (("json", "json", "total"), ("stream first chunk", "stream", "first_chunk"),
                                ("stream end", "stream", "total")):  # fmt: skip
        for target in ("direct", "gateway", "added"):
            cells = "  ".join(
                f"{q} {spread(runs, 'latency', mode, metric, target, q, digits=3):>13}" for q in ("p50", "p99")
            )
            print(f"  {label:20} {target:8} {cells}")
    print(f"Throughput at c={s['concurrency']}, {s['duration']:g} s each ({result['environment']['load_generator']})")
    for mode in ("json", "stream"):
        for target in ("direct", "gateway"):
            rps = spread(runs, "throughput", mode, target, "rps", digits=0)
            p99 = (
                spread(runs, "throughput", mode, target, "p99_ms")
                if "p99_ms" in runs[0]["throughput"][mode][target]
                else "-"
            )
            cpu = spread(runs, "throughput", mode, target, "cpu_us_per_request", digits=0)
            print(f"  {mode:20} {target:8} {rps:>15} req/s  p99 {p99:>13} ms  server CPU {cpu:>9} us/req")
    if (cached := result.get("cached")) is not None:
        print("\nCACHED PATH, not the gateway's overhead: temperature 0, the same request again, so the gateway")
        print("answers from its Redis response cache and the upstream is never called (separate from the goals):")
        p50, p99 = (span_text(min(v), max(v), 3) for v in (cached["p50_ms"], cached["p99_ms"]))
        rps = span_text(min(cached["rps"]), max(cached["rps"]), 0)
        print(f"  cached   gateway latency p50 {p50} ms, p99 {p99} ms; throughput {rps} req/s at c={s['concurrency']}")
    if (workers := result.get("workers_case")) is not None:
        print(f"\nWORKERS CASE: {workers['layout']}")
        for count in ("1", "2"):
            rps = workers["rps"][count]
            print(f"  {count} worker{'s' if count == '2' else ' '}  {span_text(min(rps), max(rps), 0):>15} req/s")
