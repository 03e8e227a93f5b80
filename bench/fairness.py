"""Fairness benchmark: a light key's latency and two keys' throughput shares under a flood, on the real demo vLLM.

Run from the repo root: `python -m bench.fairness [--runs N] [--concurrency 4 ...]` (`make bench-fairness`).
It starts the local stack as `make run` does (`python -m services.stack`: PostgreSQL, Redis, the demo chat and
embedding vLLM CPU servers; data kept in .cache/citadel-bench-fairness), then gateways of its own on the stack's
servers: one with the admission queue off (CITADEL_ADMISSION_ENABLED=false) and one with it on per concurrency
given (the demo servers' `max_concurrency` in a copy of config/models.yaml; each gateway its own Redis database,
so no queue state is shared). Two user
keys with no rate limits send the request below (max_tokens 16, temperature 0.7: no cache answers it) to one model.
Per run:
  A  latency   the light key, 1 request at a time: (a) alone, (b) while the flooding key keeps 32 requests in
               flight, queue off, (c) the same, queue on. Goal (issue 16): (c) p50 <= 2x (a) p50.
  B  fairness  two keys both flooding, 32 and 4 requests in flight, queue off and on: each key's completed
               requests per second and Jain's index over the two. Goal: >= 0.9 with the queue.
A flooding client that is refused (429/503) waits for Retry-After (at most 1 s) before its next request.
Writes bench/results/fairness-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import yaml

from bench import harness
from bench.stats import Goal, judge, verdict_line
from services.postgres import LocalPostgres
from tests.support import processes
from tests.support.ports import free_port
from tests.support.supervised_stack import stack_environment

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "citadel-bench-fairness"  # its own demo model, database and logs, kept between runs
ADMIN_KEY = "bench-admin-key-0123456789"
MODEL = "phi3"  # one of the names the demo chat server serves (config/models.yaml, profile `local`)
READY_TIMEOUT_S = 900
UNLIMITED = "2000000000/minute"  # a limit never reached: the Redis limiter still runs, as in production
LATENCY_GOAL = Goal("latency_ratio", "light p50 under flood, queue on / idle", 2.0, "x")
JAIN_GOAL = Goal("jain", "Jain's index, 32 vs 4 in flight, queue on", 0.9, "", higher_is_better=True)


def progress(message: str) -> None:
    print(f"[bench-fairness {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def payload() -> dict[str, Any]:
    message = {"role": "user", "content": "Write a haiku about waiting in line."}
    return {"model": MODEL, "messages": [message], "max_tokens": 16, "temperature": 0.7}


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: 1 when every value is equal, 1/n when one takes everything."""
    total, squares = sum(values), sum(v * v for v in values)
    return round(total * total / (len(values) * squares), 4) if squares else 0.0


def quantile_ms(samples: Sequence[float], q: float) -> float:
    """The nearest-rank q-quantile of latencies in seconds, in ms."""
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


@dataclass(slots=True)
class LightResult:
    """The light key's requests in one phase: latencies of its answers (s) and the statuses of the rest."""

    latencies_s: list[float] = field(default_factory=list)
    refused: Counter[int] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        if not self.latencies_s:
            return {"requests": 0, "p50_ms": None, "p95_ms": None, "refused": dict(self.refused)}
        p50, p95 = quantile_ms(self.latencies_s, 0.5), quantile_ms(self.latencies_s, 0.95)
        return {"requests": len(self.latencies_s), "p50_ms": p50, "p95_ms": p95, "refused": dict(self.refused)}


@dataclass(slots=True)
class FloodResult:
    """One flooding key: answers completed inside the measured window, and refusals by status."""

    in_flight: int
    completed: int = 0
    refused: Counter[int] = field(default_factory=Counter)

    def summary(self, window_s: float) -> dict[str, Any]:
        rps = round(self.completed / window_s, 3)
        return {"in_flight": self.in_flight, "completed": self.completed, "rps": rps, "refused": dict(self.refused)}


class Client:
    """Sends the benchmark's request to one gateway as one key."""

    def __init__(self, session: aiohttp.ClientSession, url: str, key: str) -> None:
        self.session, self.url = session, f"{url}/v1/chat/completions"
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        self.body = json.dumps(payload()).encode()

    async def send(self) -> tuple[int, float, float]:
        """(status, seconds taken, seconds to wait before the next request when refused)."""
        began = time.perf_counter()
        async with self.session.post(self.url, data=self.body, headers=self.headers) as response:
            await response.read()
            retry = response.headers.get("Retry-After", "1")
        try:
            wait = min(1.0, float(retry))
        except ValueError:
            wait = 1.0
        return response.status, time.perf_counter() - began, wait


async def flood(client: Client, result: FloodResult, window: tuple[float, float]) -> None:
    """`result.in_flight` requests in a closed loop until the window ends; completions inside it are counted."""

    async def one_loop() -> None:
        while time.perf_counter() < window[1]:
            status, _, wait = await client.send()
            if status != 200:
                result.refused[status] += 1
                await asyncio.sleep(wait)
            elif window[0] <= time.perf_counter() <= window[1]:
                result.completed += 1

    await asyncio.gather(*(one_loop() for _ in range(result.in_flight)))


async def light(client: Client, duration_s: float) -> LightResult:
    result = LightResult()
    deadline = time.perf_counter() + duration_s
    while time.perf_counter() < deadline:
        status, taken, _ = await client.send()
        if status == 200:
            result.latencies_s.append(taken)
        else:
            result.refused[status] += 1
    return result


async def latency_phase(
    session: aiohttp.ClientSession, url: str, keys: dict[str, str], args: argparse.Namespace, *, flooded: bool
) -> dict[str, Any]:
    """Scenario A: the light key for `--duration` s, after `--warmup` s of the flood (when flooded)."""
    started = time.perf_counter()
    window = (started + args.warmup, started + args.warmup + args.duration)
    flooder = FloodResult(args.flood)
    task = asyncio.ensure_future(flood(Client(session, url, keys["flood"]), flooder, window)) if flooded else None
    if task:
        await asyncio.sleep(args.warmup)  # the flood fills vLLM (and the queue) first
    measured = await light(Client(session, url, keys["light"]), args.duration)
    if task:
        await task  # drained: the next phase starts on an idle server
    return {"light": measured.summary(), "flood": flooder.summary(args.duration) if task else None}


async def fairness_phase(
    session: aiohttp.ClientSession, url: str, keys: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    """Scenario B: both keys flood for `--warmup` + `--duration` s; throughput counted over the last `--duration`."""
    started = time.perf_counter()
    window = (started + args.warmup, started + args.warmup + args.duration)
    results = {"flood": FloodResult(args.flood), "light": FloodResult(args.small_flood)}
    await asyncio.gather(*(flood(Client(session, url, keys[name]), r, window) for name, r in results.items()))
    shares = {f"key_{r.in_flight}": r.summary(args.duration) for r in results.values()}
    return {"keys": shares, "jain": jain([r.completed / args.duration for r in results.values()])}


async def measure_run(gateways: dict[str, str], keys: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    run: dict[str, Any] = {"load_average_start": [round(v, 2) for v in os.getloadavg()]}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        first_on = next(name for name in gateways if name != "off")
        progress(f"A idle: the light key alone for {args.duration:g} s ({first_on})")
        run["idle"] = await latency_phase(session, gateways[first_on], keys, args, flooded=False)
        for name, url in gateways.items():
            progress(f"A flood, queue {name}: {args.flood} in flight + the light key")
            run[f"flood_{name}"] = await latency_phase(session, url, keys, args, flooded=True)
        for name, url in gateways.items():
            progress(f"B fairness, queue {name}: {args.flood} and {args.small_flood} in flight")
            run[f"fair_{name}"] = await fairness_phase(session, url, keys, args)
    run["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    return run


def start_stack(stack: ExitStack, args: argparse.Namespace) -> dict[str, str]:
    """The stack's servers, then a gateway per queue setting on them; {setting: gateway URL}."""
    ports = {name: free_port() for name in ("demo-chat", "embed", "postgres", "redis", "gateway")}
    env = stack_environment(ports, cache=CACHE, admin_key=ADMIN_KEY) | {
        "CITADEL_RATE_LIMIT_ROLE_REQUESTS": json.dumps({"admin": UNLIMITED, "user": UNLIMITED}),
        "CITADEL_RATE_LIMIT_ROLE_TOKENS": json.dumps({"admin": UNLIMITED, "user": UNLIMITED}),
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
    password = (CACHE / "postgres.password").read_text().strip()
    database = LocalPostgres(CACHE / "postgres", ports["postgres"], password=password).url
    settings = {"off": {"CITADEL_ADMISSION_ENABLED": "false"}} | {
        f"on-c{c}": {"CITADEL_ADMISSION_ENABLED": "true", "CITADEL_CONFIG_PATH": str(models_file(c))}
        for c in args.concurrency
    }
    gateways = {}
    for db, (name, extra) in enumerate(settings.items(), start=1):
        port = free_port()
        gateway_env = (
            env
            | extra
            | {
                "DATABASE_URL": database,
                # A Redis database of its own: limits, cache and queue state are not shared between the gateways.
                "REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/{db}",
                "CITADEL_HOST": "127.0.0.1",
                "CITADEL_PORT": str(port),
                "CITADEL_AUDIT_SPOOL_DIR": str(CACHE / f"audit-spool-{name}"),
                "CITADEL_QDRANT_PATH": str(CACHE / f"qdrant-{name}"),  # one process per embedded store
            }
        )
        url = f"http://127.0.0.1:{port}"
        process = processes.start(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
            env=gateway_env, cwd=ROOT, log=CACHE / f"gateway-{name}.log", health_url=f"{url}/health", timeout_s=60,
        )  # fmt: skip
        stack.callback(processes.stop, process)
        gateways[name] = url
    return gateways | {"admin": f"http://127.0.0.1:{ports['gateway']}"}


def models_file(concurrency: int) -> Path:
    """config/models.yaml with the local profile's servers admitting `concurrency` requests at once (their
    `max_concurrency`, which the models they serve take over CITADEL_ADMISSION_CONCURRENCY)."""
    raw = yaml.safe_load((ROOT / "config" / "models.yaml").read_text())
    for server in raw["profiles"]["local"]["servers"].values():
        server["max_concurrency"] = concurrency
    path = CACHE / f"models-c{concurrency}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def create_keys(admin_url: str) -> dict[str, str]:
    """Two user keys (equal weights, default class), through the stack's gateway (the keys live in PostgreSQL)."""
    keys = {}
    for name in ("flood", "light"):
        response = httpx.post(
            f"{admin_url}/admin/keys",
            json={"name": f"bench-fairness-{name}", "role": "user"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=30,
        )
        response.raise_for_status()
        keys[name] = response.json()["key"]
    return keys


def span(values: Sequence[float | None], digits: int = 1) -> str:
    """`min-max (median m)` over the runs that have a value (none: every request of the phase was refused)."""
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    low, high, mid = min(present), max(present), statistics.median(present)
    return f"{low:.{digits}f}-{high:.{digits}f} (median {mid:.{digits}f})"


def _ratio(value: float | None, base: float | None) -> float:
    return value / base if value is not None and base else float("inf")


def report(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    runs, names = result["runs"], result["gateways"]
    loads = ", ".join(f"{r['load_average_start'][0]:.2f}->{r['load_average_end'][0]:.2f}" for r in runs)
    lines = [f"\nRequest body (both keys): {json.dumps(result['request_body'])}"]
    lines.append(f"{len(runs)} runs; 1-minute load average per run (start->end): {loads}; {result['cores']} cores")
    lines.append(f"A: light key, 1 at a time for {args.duration:g} s; flood key {args.flood} in flight (ms)")
    for phase in ["idle", *(f"flood_{n}" for n in names)]:
        light_runs = [r[phase]["light"] for r in runs]
        p50, p95 = span([x["p50_ms"] for x in light_runs]), span([x["p95_ms"] for x in light_runs])
        refused = sum(sum(x["refused"].values()) for x in light_runs)
        flood = runs[0][phase]["flood"]
        rps = f"  flood {span([r[phase]['flood']['rps'] for r in runs], 2)} req/s" if flood else ""
        lines.append(f"  {phase:12} p50 {p50:>28}  p95 {p95:>28}  refused {refused}{rps}")
    lines.append(f"B: two keys flooding ({args.flood} and {args.small_flood} in flight) for {args.duration:g} s")
    for name in names:
        fair = [r[f"fair_{name}"] for r in runs]
        shares = "  ".join(f"{key} {span([f['keys'][key]['rps'] for f in fair], 2)} req/s" for key in fair[0]["keys"])
        total = span([sum(k["rps"] for k in f["keys"].values()) for f in fair], 2)
        lines.append(f"  queue {name:7} Jain {span([f['jain'] for f in fair], 3)}  {shares}  total {total} req/s")
    lines.append("Goals (issue 16), per queue-on setting; the queue-off figures are the baseline")
    for name in (n for n in names if n != "off"):
        # A run whose light key got no answer under the flood counts as missing the goal.
        ratios = [_ratio(r[f"flood_{name}"]["light"]["p50_ms"], r["idle"]["light"]["p50_ms"]) for r in runs]
        off = [_ratio(r["flood_off"]["light"]["p50_ms"], r["idle"]["light"]["p50_ms"]) for r in runs]
        lines.append(f"  [{name}] without the queue the ratio was {span(off, 2)} x")
        lines.append(verdict_line(judge(LATENCY_GOAL, ratios)))
        lines.append(verdict_line(judge(JAIN_GOAL, [r[f"fair_{name}"]["jain"] for r in runs])))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of flood before a phase is measured")
    parser.add_argument("--flood", type=int, default=32, help="requests in flight of the flooding key")
    parser.add_argument("--small-flood", type=int, default=4, help="requests in flight of the second key in B")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[4],
        help="requests at once the queue-on gateways admit to the demo chat server (its max_concurrency; shipped: 4)",
    )
    args = parser.parse_args()
    result = harness.begin(args, payload(), runs=[])
    with ExitStack() as stack:
        gateways = start_stack(stack, args)
        keys = create_keys(gateways.pop("admin"))
        result["gateways"] = list(gateways)
        for index in range(args.runs):
            progress(f"run {index + 1}/{args.runs}")
            result["runs"].append(asyncio.run(measure_run(gateways, keys, args)))
    return harness.finish("fairness", result, report(result, args))


if __name__ == "__main__":
    harness.run(main, progress)
