"""Gateway overhead benchmark: the same chat request sent straight to a fake upstream and through the gateway.

Run from the repo root: `python -m bench.overhead [--runs 3] [--requests N] [--duration S] [--concurrency C]`.
The UNCACHED path with everything on: a sampled request (temperature 0.7, so no response cache answers it), a
user key with per-key limits (the Redis limiter runs on every request), metrics, the JSON log line, and audit
into a real local PostgreSQL through the gateway's writer. One gateway worker is pinned to CPU 0; the fake
upstream, Redis, PostgreSQL and the load generators share CPU 1. Each run measures:
  latency     N sequential requests on keep-alive connections, direct and gateway alternating request by
              request (both see the same machine); a blocking raw-socket client, no event loop in the way
  throughput  C connections for S seconds per case with wrk, and the server's CPU time per request (from
              /proc), which host noise distorts less than req/s; the gateway's RSS after it
  cached      a separate line: temperature 0, the same request again, answered from the gateway's cache
Then the workers case (1 worker, then 2, everything sharing both cores) and the goals of issue 15, each as the
range over the runs with PASS/MISS. Writes bench/results/overhead-<timestamp>.json (all runs, environment, goals).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.load import Request, latency_case, load_generator, rss_mib, set_affinity, throughput
from bench.overhead_report import column, print_report
from bench.servers import MODEL, ROOT, Backends, start_backends, start_gateway
from bench.stats import OVERHEAD_GOALS, WORKERS_GOAL, Verdict, judge, percentiles
from tests.support.processes import stop

PINNED = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def core_speed() -> dict[int, float]:
    """ms for a fixed pure-Python loop on each core (best of 3)."""
    speeds = {}
    for cpu in sorted(os.sched_getaffinity(0)):
        os.sched_setaffinity(0, {cpu})
        runs = []
        for _ in range(3):
            began = time.perf_counter()
            sum(range(2_000_000))
            runs.append(time.perf_counter() - began)
        speeds[cpu] = round(min(runs) * 1e3, 1)
    return speeds


def round_trip_us(cpu_a: int, cpu_b: int, n: int = 3000) -> dict[str, float]:
    """A one-byte ping-pong between two processes on two cores: the price of waking the other side."""
    a, b = socket.socketpair()
    if (child := os.fork()) == 0:
        os.sched_setaffinity(0, {cpu_b})
        while b.recv(1) == b"x":
            b.send(b"x")
        os._exit(0)
    os.sched_setaffinity(0, {cpu_a})
    samples = []
    for _ in range(n):
        began = time.perf_counter_ns()
        a.send(b"x")
        a.recv(1)
        samples.append(time.perf_counter_ns() - began)
    a.send(b"q")
    os.waitpid(child, 0)
    a.close()
    b.close()
    return percentiles(samples, scale=1e3)


def calibrate(args: argparse.Namespace) -> dict[str, Any]:
    everywhere = os.sched_getaffinity(0)
    speed: dict[str, Any] = {"core_speed_ms": core_speed()}  # first: the round trips below pin this process
    if PINNED:
        speed["same_core_round_trip_us"] = round_trip_us(args.load_cpu, args.load_cpu)
        speed["cross_core_round_trip_us"] = round_trip_us(args.load_cpu, args.gateway_cpu)
    os.sched_setaffinity(0, everywhere)
    return speed


def environment(args: argparse.Namespace) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "pinning": f"gateway CPU {args.gateway_cpu}; upstream, Redis, PostgreSQL, load CPU {args.load_cpu}"
        if PINNED
        else "none",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_generator": load_generator(),
    }


def one_run(backends: Backends, port: int, pid: int, request: Request, args: argparse.Namespace) -> dict[str, Any]:
    """Latency (JSON, stream), throughput (JSON, stream; direct and gateway) and the gateway's RSS."""
    ports = {"direct": backends.upstream_port, "gateway": port}
    pids = {"direct": backends.upstream.pid, "gateway": pid}
    run: dict[str, Any] = {"load_average": [round(v, 2) for v in os.getloadavg()], "latency": {}, "throughput": {}}
    load_cpu = str(args.load_cpu) if PINNED else None
    for mode, req in (("json", request), ("stream", request.streaming())):
        progress(f"  latency {mode}: {args.requests} requests each, direct and gateway alternating")
        run["latency"][mode] = latency_case(ports, req, args.requests)
    for mode, req in (("json", request), ("stream", request.streaming())):
        run["throughput"][mode] = {}
        for target in ("direct", "gateway"):
            progress(f"  throughput {mode} {target}: {args.concurrency} connections, {args.duration:g} s")
            run["throughput"][mode][target] = throughput(
                ports[target], pids[target], req, concurrency=args.concurrency, duration=args.duration,
                cpus=load_cpu, tmp=backends.tmp,
            )  # fmt: skip
    run["rss_mib"] = rss_mib(pid)
    run["goals"] = {
        "added_p50_ms": run["latency"]["json"]["total"]["added"]["p50"],
        "added_p99_ms": run["latency"]["json"]["total"]["added"]["p99"],
        "gateway_rps": run["throughput"]["json"]["gateway"]["rps"],
        "gateway_cpu_ms": run["throughput"]["json"]["gateway"]["cpu_us_per_request"] / 1000,
        "added_first_chunk_p50_ms": run["latency"]["stream"]["first_chunk"]["added"]["p50"],
        "rss_mib": run["rss_mib"],
    }
    return run


def cached_run(backends: Backends, port: int, pid: int, request: Request, args: argparse.Namespace) -> dict[str, float]:
    """temperature 0 and the same request again: the gateway's cache answers (warm-up fills it)."""
    progress("  cached line: temperature 0, the same request repeated (answered from the gateway's cache)")
    latency = latency_case({"gateway": port}, request, max(200, args.requests // 4))["total"]["gateway"]
    load = throughput(
        port, pid, request, concurrency=args.concurrency, duration=args.duration,
        cpus=str(args.load_cpu) if PINNED else None, tmp=backends.tmp,
    )  # fmt: skip
    return {"p50_ms": latency["p50"], "p99_ms": latency["p99"], "rps": load["rps"], "errors": load["errors"]}


def workers_case(stack: ExitStack, backends: Backends, request: Request, args: argparse.Namespace) -> dict[str, Any]:
    """1 worker, then 2, with every process (upstream, Redis, PostgreSQL, wrk) free to use both cores."""
    everywhere = os.sched_getaffinity(0)
    for pid in backends.pids():
        set_affinity(pid, everywhere)
    rps: dict[str, list[float]] = {}
    for workers in (1, 2):
        gateway = start_gateway(stack, backends, workers=workers, cpus=None, name=f"gateway-{workers}w")
        for run in range(args.runs):
            progress(f"workers case: {workers} worker(s), run {run + 1}/{args.runs}, {args.duration:g} s")
            figures = throughput(
                gateway.port, gateway.process.pid, request, concurrency=args.concurrency, duration=args.duration,
                cpus=None, tmp=backends.tmp,
            )  # fmt: skip
            rps.setdefault(str(workers), []).append(figures["rps"])
        progress(f"stopping the {workers}-worker gateway")
        stop(gateway.process)
    layout = (
        f"{len(everywhere)} cores shared by the gateway's workers, the fake upstream, Redis, PostgreSQL and wrk "
        "(nothing pinned): the upstream and the load take CPU the second worker would otherwise have"
    )
    ratio = [round(two / one, 3) for one, two in zip(rps["1"], rps["2"], strict=True)]
    return {"layout": layout, "rps": rps, "ratio": ratio}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of every case; figures are ranges over them")
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per latency case")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per throughput case")
    parser.add_argument("--concurrency", type=int, default=32, help="connections for the throughput cases")
    parser.add_argument("--gateway-cpu", type=int, default=0, help="the core of the gateway worker")
    parser.add_argument("--load-cpu", type=int, default=1, help="the core of the upstream, Redis, PostgreSQL, load")
    parser.add_argument("--no-redis", action="store_true", help="without Redis (no rate limit check, no cache)")
    parser.add_argument("--no-postgres", action="store_true", help="without PostgreSQL (audit rows go to the spool)")
    parser.add_argument("--workers-case", action=argparse.BooleanOptionalAction, default=True,
                        help="measure 2 workers against 1 (default on; about 2 x runs x duration s)")  # fmt: skip
    parser.add_argument("--cached", action=argparse.BooleanOptionalAction, default=True, help="the cached line")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so that the servers are stopped
    uncached = Request(MODEL, key="<key>")
    print('Request body (POST /v1/chat/completions; streaming cases add "stream": true; the cached line sends')
    print(f"temperature 0):\n  {uncached.body().decode()}", flush=True)
    result: dict[str, Any] = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": environment(args)}
    result |= {"settings": vars(args).copy(), "request_body": uncached.payload()}
    progress("calibrating the cores")
    result["calibration"] = calibrate(args)
    with tempfile.TemporaryDirectory(prefix="citadel-bench-") as tmp, ExitStack() as stack:
        backends = start_backends(
            stack, Path(tmp), load_cpu=args.load_cpu, pinned=PINNED, postgres=not args.no_postgres,
            redis=not args.no_redis, progress=progress,
        )  # fmt: skip
        request = Request(MODEL, key=backends.key)
        if PINNED:
            os.sched_setaffinity(0, {args.load_cpu})  # the latency client beside the upstream
        progress(f"starting the gateway (1 worker{f', CPU {args.gateway_cpu}' if PINNED else ''})")
        gateway = start_gateway(
            stack, backends, workers=1, cpus=str(args.gateway_cpu) if PINNED else None, name="gateway"
        )
        pid = gateway.process.pid
        result["runs"] = []
        cached: dict[str, list[float]] = {"p50_ms": [], "p99_ms": [], "rps": []}
        for run in range(args.runs):
            progress(f"run {run + 1}/{args.runs} (load average {os.getloadavg()[0]:.2f})")
            result["runs"].append(one_run(backends, gateway.port, pid, request, args))
            if args.cached and not args.no_redis:
                for name, value in cached_run(
                    backends, gateway.port, pid, Request(MODEL, backends.key, 0.0), args
                ).items():
                    cached.setdefault(name, []).append(value)
        result["cached"] = cached if cached["rps"] else None
        progress("stopping the gateway (SIGTERM: its audit writer flushes the last rows) and counting audit rows")
        stop(gateway.process)
        rows = backends.audit_rows()
        result["audit"] = (
            f"PostgreSQL through the gateway's audit writer ({rows:,} rows in llm.audit_log)"
            if rows is not None
            else "no PostgreSQL (--no-postgres): rows went to the spool folder"
        )
        if PINNED:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        result["workers_case"] = workers_case(stack, backends, request, args) if args.workers_case else None
        progress("stopping the servers")
    verdicts = verdicts_of(result)
    result["goals"] = [
        {"name": v.goal.name, "goal": v.goal.text(), "values": v.values, "min": v.low, "max": v.high,
         "median": v.median, "runs_met": v.met, "verdict": v.word}
        for v in verdicts
    ]  # fmt: skip
    result["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    print_report(result, verdicts)
    path = ROOT / "bench" / "results" / f"overhead-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nResults written to {path.relative_to(ROOT)}")
    return 0


def verdicts_of(result: dict[str, Any]) -> list[Verdict]:
    verdicts = [judge(goal, column(result["runs"], "goals", goal.name)) for goal in OVERHEAD_GOALS]
    if result["workers_case"] is not None:
        verdicts.append(judge(WORKERS_GOAL, result["workers_case"]["ratio"]))
    return verdicts


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        progress("interrupted (the servers are stopped)")
        sys.exit(130)
