"""Batch API benchmark: a chat batch's throughput alone, and an interactive key's latency idle vs while a batch runs.

Run from the repo root: `python -m bench.batch [--lines N] [--runs N] [--idle-duration S]` (`make bench-batch`).
It starts the local stack as `make run` does (`python -m services.stack`: PostgreSQL, Redis, the demo chat and
embedding vLLM CPU servers, the gateway with its batch runner at the default CITADEL_BATCH_CONCURRENCY and
admission settings; data kept in .cache/citadel-bench-batch), which takes minutes. Two user keys with no rate
limits (a batch spends its key's own budget: here the budget is not what is measured): `batch` and `interactive`.
Every request, the batch's lines and the interactive key's alike, is the body below (max_tokens 16, temperature
0.7, so no cache answers it). Per run:
  idle        the interactive key alone, 1 request at a time, for --idle-duration s: p50/p95
  alone       a batch of --lines lines, nothing else: wall time from `POST /v1/batches` to `completed` (validation
              included, as a user sees it) and lines per second
  contended   a second batch of --lines lines; once its first lines are done, the interactive key sends 1 request
              at a time until the batch completes: its p50/p95, and the batch's wall time under that traffic
Goal (issue 17): the interactive p50 while a batch runs within 2x its idle p50.
--runs defaults to 1 (two 1,000-line batches take minutes on 2 cores); the figures are ranges over the runs.
Writes bench/results/batch-<timestamp>.json.
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
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import harness
from bench.fairness import UNLIMITED, quantile_ms, span
from bench.stats import Goal, judge, verdict_line
from tests.support import processes
from tests.support.ports import free_port
from tests.support.supervised_stack import stack_environment

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "citadel-bench-batch"  # its own demo model, database and logs, kept between runs
ADMIN_KEY = "bench-admin-key-0123456789"
MODEL = "phi3"  # one of the names the demo chat server serves (config/models.yaml, profile `local`)
CHAT = "/v1/chat/completions"
READY_TIMEOUT_S = 900
OVER = ("completed", "failed", "expired", "cancelled")
LATENCY_GOAL = Goal("latency_ratio", "interactive p50 while a batch runs / idle", 2.0, "x")


def progress(message: str) -> None:
    print(f"[bench-batch {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def payload() -> dict[str, Any]:
    message = {"role": "user", "content": "Write a haiku about patience."}
    return {"model": MODEL, "messages": [message], "max_tokens": 16, "temperature": 0.7}


def batch_file(lines: int) -> bytes:
    body = payload()
    return b"".join(
        json.dumps({"custom_id": f"line-{n}", "method": "POST", "url": CHAT, "body": body}).encode() + b"\n"
        for n in range(lines)
    )


@dataclass(slots=True)
class Latencies:
    """The interactive key's answers (seconds) and the statuses of the requests that were not answered 200."""

    samples_s: list[float] = field(default_factory=list)
    refused: Counter[int] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        if not self.samples_s:
            return {"requests": 0, "p50_ms": None, "p95_ms": None, "refused": dict(self.refused)}
        p50, p95 = quantile_ms(self.samples_s, 0.5), quantile_ms(self.samples_s, 0.95)
        return {"requests": len(self.samples_s), "p50_ms": p50, "p95_ms": p95, "refused": dict(self.refused)}


async def interactive(client: httpx.AsyncClient, key: str, until: asyncio.Event, result: Latencies) -> None:
    """One request at a time until `until` is set."""
    headers = {"Authorization": f"Bearer {key}"}
    while not until.is_set():
        began = time.perf_counter()
        response = await client.post(CHAT, json=payload(), headers=headers)
        if response.status_code == 200:
            result.samples_s.append(time.perf_counter() - began)
        else:
            result.refused[response.status_code] += 1
            await asyncio.sleep(0.2)


async def idle_phase(client: httpx.AsyncClient, key: str, duration_s: float) -> dict[str, Any]:
    result, stop = Latencies(), asyncio.Event()
    asyncio.get_running_loop().call_later(duration_s, stop.set)
    await interactive(client, key, stop, result)
    return result.summary()


async def submit(client: httpx.AsyncClient, key: str, lines: int) -> tuple[str, float]:
    """(batch id, perf_counter time of its creation)."""
    headers = {"Authorization": f"Bearer {key}"}
    files = {"file": ("bench.jsonl", batch_file(lines), "application/jsonl")}
    uploaded = await client.post("/v1/files", files=files, data={"purpose": "batch"}, headers=headers)
    uploaded.raise_for_status()
    body = {"input_file_id": uploaded.json()["id"], "endpoint": CHAT, "completion_window": "24h"}
    created = await client.post("/v1/batches", json=body, headers=headers)
    created.raise_for_status()
    return created.json()["id"], time.perf_counter()


async def wait_batch(
    client: httpx.AsyncClient, key: str, batch_id: str, *, max_wait_s: float, started: asyncio.Event | None = None
) -> dict[str, Any]:
    """Polls the batch every 0.5 s until it is over (the answer, with when that was seen); sets `started` once
    its first line is done."""
    headers = {"Authorization": f"Bearer {key}"}
    deadline = time.perf_counter() + max_wait_s
    while True:
        batch = (await client.get(f"/v1/batches/{batch_id}", headers=headers)).json()
        if started is not None and batch["request_counts"]["completed"] > 0:
            started.set()
        if batch["status"] in OVER:
            return dict(batch) | {"_seen_over_at": time.perf_counter()}
        if time.perf_counter() > deadline:
            raise TimeoutError(f"batch still {batch['status']} after {max_wait_s:g} s: {batch['request_counts']}")
        await asyncio.sleep(0.5)


def batch_summary(batch: dict[str, Any], created: float, lines: int) -> dict[str, Any]:
    wall_s = batch["_seen_over_at"] - created  # to within one poll (0.5 s)
    counts = batch["request_counts"]
    if batch["status"] != "completed" or counts["completed"] != lines:
        raise RuntimeError(f"the batch ended {batch['status']} with {counts}")
    return {"lines": lines, "wall_s": round(wall_s, 2), "lines_per_s": round(lines / wall_s, 3), "counts": counts}


async def alone_phase(client: httpx.AsyncClient, keys: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    batch_id, created = await submit(client, keys["batch"], args.lines)
    batch = await wait_batch(client, keys["batch"], batch_id, max_wait_s=args.max_wait)
    return batch_summary(batch, created, args.lines)


async def contended_phase(client: httpx.AsyncClient, keys: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    batch_id, created = await submit(client, keys["batch"], args.lines)
    started = asyncio.Event()
    waiting = asyncio.create_task(
        wait_batch(client, keys["batch"], batch_id, max_wait_s=args.max_wait, started=started)
    )
    flowing = asyncio.create_task(started.wait())
    await asyncio.wait([waiting, flowing], return_when=asyncio.FIRST_COMPLETED)
    flowing.cancel()  # the batch ended before its first line was seen done: nothing to wait for
    over, measured = asyncio.Event(), Latencies()
    waiting.add_done_callback(lambda _: over.set())
    await interactive(client, keys["interactive"], over, measured)
    return {"interactive": measured.summary(), "batch": batch_summary(await waiting, created, args.lines)}


async def measure_run(url: str, keys: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    run: dict[str, Any] = {"load_average_start": [round(v, 2) for v in os.getloadavg()]}
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for _ in range(5):  # warm-up: connections, the model server's first requests
            await client.post(CHAT, json=payload(), headers={"Authorization": f"Bearer {keys['interactive']}"})
        progress(f"idle: the interactive key alone for {args.idle_duration:g} s")
        run["idle"] = await idle_phase(client, keys["interactive"], args.idle_duration)
        progress(f"alone: a {args.lines}-line batch, nothing else")
        run["alone"] = await alone_phase(client, keys, args)
        progress(f"contended: a {args.lines}-line batch + the interactive key until it completes")
        run["contended"] = await contended_phase(client, keys, args)
    run["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    return run


def start_stack(stack: ExitStack) -> str:
    """The stack as `make run` starts it, on ports of its own, roles without limits; the gateway's URL."""
    ports = {name: free_port() for name in ("demo-chat", "embed", "postgres", "redis", "gateway")}
    env = stack_environment(ports, cache=CACHE, admin_key=ADMIN_KEY) | {
        "CITADEL_RATE_LIMIT_ROLE_REQUESTS": json.dumps({"admin": UNLIMITED, "user": UNLIMITED}),
        "CITADEL_RATE_LIMIT_ROLE_TOKENS": json.dumps({"admin": UNLIMITED, "user": UNLIMITED}),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / "stack.log"
    progress(f"starting the stack (vLLM takes minutes on 2 cores; log: {log.relative_to(ROOT)})")
    url = f"http://127.0.0.1:{ports['gateway']}"
    runner = processes.start(
        [sys.executable, "-m", "services.stack", "--gateway-port", str(ports["gateway"])],
        env=env, cwd=ROOT, log=log, health_url=f"{url}/health", timeout_s=READY_TIMEOUT_S,
    )  # fmt: skip

    def stop_stack() -> None:
        progress("stopping the stack (Ctrl-C to its runner)")
        os.kill(runner.pid, signal.SIGINT)
        try:
            runner.wait(timeout=60)
        except subprocess.TimeoutExpired:
            processes.stop(runner, sig=signal.SIGKILL)

    stack.callback(stop_stack)
    return url


def create_keys(url: str) -> dict[str, str]:
    """Two user keys (default class, equal weights): one runs the batches, one is the interactive user."""
    keys = {}
    for name in ("batch", "interactive"):
        response = httpx.post(
            f"{url}/admin/keys",
            json={"name": f"bench-batch-{name}-{int(time.time())}", "role": "user"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=30,
        )
        response.raise_for_status()
        keys[name] = response.json()["key"]
    return keys


def _ratio(value: float | None, base: float | None) -> float:
    return value / base if value is not None and base else float("inf")


def report(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    runs = result["runs"]
    loads = ", ".join(f"{r['load_average_start'][0]:.2f}->{r['load_average_end'][0]:.2f}" for r in runs)
    lines = [f"\nRequest body (every batch line and interactive request): {json.dumps(result['request_body'])}"]
    lines.append(f"{len(runs)} run(s); 1-minute load average per run (start->end): {loads}; {result['cores']} cores")
    lines.append(f"Batch of {args.lines} lines (POST /v1/batches to completed)")
    for phase, batches in (
        ("alone", [r["alone"] for r in runs]),
        ("contended", [r["contended"]["batch"] for r in runs]),
    ):
        wall, rate = span([b["wall_s"] for b in batches]), span([b["lines_per_s"] for b in batches], 2)
        lines.append(f"  {phase:10} wall {wall} s  throughput {rate} lines/s")
    lines.append("Interactive key, 1 request at a time (ms)")
    for phase, measured in (
        ("idle", [r["idle"] for r in runs]),
        ("batch", [r["contended"]["interactive"] for r in runs]),
    ):
        p50, p95 = span([m["p50_ms"] for m in measured]), span([m["p95_ms"] for m in measured])
        count = sum(m["requests"] for m in measured)
        refused = sum(sum(m["refused"].values()) for m in measured)
        lines.append(f"  {phase:10} p50 {p50:>26}  p95 {p95:>26}  answered {count}  refused {refused}")
    ratios = [_ratio(r["contended"]["interactive"]["p50_ms"], r["idle"]["p50_ms"]) for r in runs]
    lines.append("Goal (issue 17)")
    lines.append(verdict_line(judge(LATENCY_GOAL, ratios)))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lines", type=int, default=1000, help="lines per batch")
    parser.add_argument("--runs", type=int, default=1, help="runs (1 by default: each takes minutes)")
    parser.add_argument("--idle-duration", type=float, default=30.0, help="seconds of the idle latency phase")
    parser.add_argument("--max-wait", type=float, default=1200.0, help="seconds a batch may take before giving up")
    args = parser.parse_args()
    result = harness.begin(args, payload(), runs=[])
    with ExitStack() as stack:
        url = start_stack(stack)
        keys = create_keys(url)
        for index in range(args.runs):
            progress(f"run {index + 1}/{args.runs}")
            result["runs"].append(asyncio.run(measure_run(url, keys, args)))
    return harness.finish("batch", result, report(result, args))


if __name__ == "__main__":
    harness.run(main, progress)
