"""End-to-end benchmark: the same short request to the real demo vLLM server, directly and through the gateway.

Run from the repo root: `python -m bench.end_to_end [--requests N] [--duration S] [--rounds R]` (`make bench-e2e`).
It starts the local stack exactly as `make run` and the e2e tests do (`python -m services.stack`: PostgreSQL,
Redis, the demo chat and embedding vLLM CPU servers, the gateway; the demo model is made on first use and
kept in .cache/citadel-bench-e2e), which takes minutes. The admin key gets a role limit it never reaches, so
the Redis limiter runs; audit goes to the stack's PostgreSQL. Then, with the request below (max_tokens 16,
temperature 0.7, so no cache answers it):
  latency     N requests at concurrency 1, direct and gateway alternating request by request
  c=8         R rounds of S seconds direct then S seconds gateway (8 clients in a closed loop); per round the
              gateway's p50 latency and throughput against the direct ones
Goal (issue 15): the gateway within 5% of vLLM directly, on latency and throughput at concurrency 8.
Writes bench/results/end-to-end-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp

from bench import harness
from bench.stats import END_TO_END_GOALS, judge, percentiles, span_text, verdict_line
from tests.support import processes
from tests.support.ports import free_port
from tests.support.supervised_stack import stack_environment

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "citadel-bench-e2e"  # its own demo model, database and logs, kept between runs
KEY = "bench-admin-key-0123456789"
MODEL = "hermes"  # one of the names the demo chat server serves (config/models.yaml, profile `local`)
READY_TIMEOUT_S = 900


def progress(message: str) -> None:
    print(f"[bench-e2e {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def payload(model: str) -> dict[str, Any]:
    message = {"role": "user", "content": "Write a haiku about speed."}
    return {"model": model, "messages": [message], "max_tokens": 16, "temperature": 0.7}


def start_stack(stack: ExitStack) -> dict[str, int]:
    ports = {name: free_port() for name in ("demo-chat", "embed", "postgres", "redis", "gateway")}
    env = stack_environment(ports, cache=CACHE, admin_key=KEY) | {
        "CITADEL_RATE_LIMIT_ROLE_REQUESTS": '{"admin": "2000000000/minute"}',
        "CITADEL_RATE_LIMIT_ROLE_TOKENS": '{"admin": "2000000000/minute"}',
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / "stack.log"
    progress(f"starting the stack (vLLM takes minutes on 2 cores; log: {log.relative_to(ROOT)})")
    runner = processes.start(
        [sys.executable, "-m", "services.stack", "--gateway-port", str(ports["gateway"])],
        env=env, cwd=ROOT, log=log, health_url=f"http://127.0.0.1:{ports['gateway']}/health",
        timeout_s=READY_TIMEOUT_S,
    )  # fmt: skip

    def stop_stack() -> None:
        progress("stopping the stack (Ctrl-C to its runner)")
        os.kill(runner.pid, signal.SIGINT)
        try:
            runner.wait(timeout=60)
        except subprocess.TimeoutExpired:
            processes.stop(runner, sig=signal.SIGKILL)

    stack.callback(stop_stack)
    return ports


class Target:
    """One way to reach the model: its URL, the model name it knows it by, and what it answered."""

    def __init__(self, name: str, port: int, model: str) -> None:
        self.name, self.url = name, f"http://127.0.0.1:{port}/v1/chat/completions"
        self.body = json.dumps(payload(model)).encode()
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}

    async def send(self, session: aiohttp.ClientSession) -> tuple[int, int]:
        """(ns for the whole request, completion tokens)."""
        began = time.perf_counter_ns()
        async with session.post(self.url, data=self.body, headers=self.headers) as response:
            data = await response.read()
            if response.status != 200:
                raise RuntimeError(f"{self.name}: {response.status} {data[:300]!r}")
        return time.perf_counter_ns() - began, int(json.loads(data)["usage"]["completion_tokens"])


async def closed_loop(target: Target, session: aiohttp.ClientSession, clients: int, duration: float) -> dict[str, Any]:
    samples: list[tuple[int, int]] = []
    deadline = time.perf_counter() + duration

    async def client() -> None:
        while time.perf_counter() < deadline:
            samples.append(await target.send(session))

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - began  # includes the requests in flight at the deadline
    return {
        "requests": len(samples),
        "rps": round(len(samples) / elapsed, 3),
        "latency_ms": percentiles([s[0] for s in samples]),
        "completion_tokens_mean": round(sum(s[1] for s in samples) / max(1, len(samples)), 2),
    }


async def measure(ports: dict[str, int], args: argparse.Namespace) -> dict[str, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency + 2)) as session:
        async with session.get(f"http://127.0.0.1:{ports['demo-chat']}/v1/models") as response:
            upstream_model = (await response.json())["data"][0]["id"]
        targets = [Target("direct", ports["demo-chat"], upstream_model), Target("gateway", ports["gateway"], MODEL)]
        progress(f"warm-up; direct asks vLLM for {upstream_model!r}, the gateway for {MODEL!r}")
        for _ in range(5):
            for target in targets:
                await target.send(session)
        progress(f"latency at concurrency 1: {args.requests} requests each, alternating")
        sequential: dict[str, list[int]] = {t.name: [] for t in targets}
        for _ in range(args.requests):
            for target in targets:
                sequential[target.name].append((await target.send(session))[0])
        rounds = []
        for index in range(args.rounds):
            round_: dict[str, Any] = {}
            for target in targets:
                progress(
                    f"round {index + 1}/{args.rounds}: {target.name}, {args.concurrency} clients, {args.duration:g} s"
                )
                round_[target.name] = await closed_loop(target, session, args.concurrency, args.duration)
            round_["latency_ratio"] = round(
                round_["gateway"]["latency_ms"]["p50"] / round_["direct"]["latency_ms"]["p50"], 3
            )
            round_["throughput_ratio"] = round(round_["gateway"]["rps"] / round_["direct"]["rps"], 3)
            rounds.append(round_)
    return {
        "upstream_model": upstream_model,
        "latency_c1_ms": {name: percentiles(values) for name, values in sequential.items()},
        "rounds": rounds,
    }


def report(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    lines = [f"\nRequest body: {json.dumps(result['request_body'])} (direct: model {result['upstream_model']!r})"]
    lines.append(f"Load average at the start: {result['load_average_start']}; at the end: {result['load_average_end']}")
    lines.append(f"Latency at concurrency 1, {args.requests} requests each (ms)")
    for name, q in result["latency_c1_ms"].items():
        lines.append(f"  {name:8} p50 {q['p50']:9.1f}  p90 {q['p90']:9.1f}  p99 {q['p99']:9.1f}")
    lines.append(
        f"Concurrency {args.concurrency}, {args.rounds} rounds of {args.duration:g} s each (ranges over the rounds)"
    )
    for name in ("direct", "gateway"):
        runs = [r[name] for r in result["rounds"]]
        rps = span_text(min(r["rps"] for r in runs), max(r["rps"] for r in runs))
        p50 = span_text(min(r["latency_ms"]["p50"] for r in runs), max(r["latency_ms"]["p50"] for r in runs), 1)
        tokens = span_text(
            min(r["completion_tokens_mean"] for r in runs), max(r["completion_tokens_mean"] for r in runs), 1
        )
        lines.append(f"  {name:8} {rps:>13} req/s  p50 {p50:>15} ms  completion tokens per answer {tokens}")
    lines.append("Goals: the gateway within 5% of vLLM directly")
    for goal in END_TO_END_GOALS:
        lines.append(verdict_line(judge(goal, [r[goal.name] for r in result["rounds"]])))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=30, help="sequential requests per target at concurrency 1")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per target per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of direct then gateway")
    args = parser.parse_args()
    result = harness.begin(args, payload(MODEL))
    with ExitStack() as stack:
        ports = start_stack(stack)
        result["load_average_start"] = [round(v, 2) for v in os.getloadavg()]
        result |= asyncio.run(measure(ports, args))
        result["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    return harness.finish("end-to-end", result, report(result, args))


if __name__ == "__main__":
    harness.run(main, progress)
