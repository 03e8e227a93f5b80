"""Failover benchmark: steady load on a model with two replicas; one is killed, then started again.

Run from the repo root: `python -m bench.failover [--concurrency C] [--before S] [--down S] [--after S]`.
Real processes: two fake upstream replicas and one gateway process with the gateway's default routing
settings (health probe every CITADEL_HEALTH_INTERVAL_S, 5 s by default). C clients send chat requests in a
loop. At `--before` seconds replica a is killed with SIGKILL (in-flight requests die with it); after `--down`
seconds a new process starts on its port. Reported:
  error rate        requests the clients saw fail, over the whole run and while a was down
  all on survivor   from the kill until the last request attempt that went to the dead replica (the
                    gateway's retry counter has stopped rising; sampled every 50 ms)
  recovery          from the restart until the new process answers its first request, and until it serves
                    at least a third of the traffic again
Prints the figures and writes bench/results/failover-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.catalogs import chat_entry, write_models_file
from tests.support.ports import free_port
from tests.support.processes import stop, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-admin-key-0123456789"
RETRIES = re.compile(r'^citadel_llm_upstream_retries_total\{[^}]*model="duo"[^}]*\} ([0-9.e+]+)$', re.M)


def progress(message: str) -> None:
    print(f"[failover] {message}", file=sys.stderr, flush=True)


def start(command: list[str], *, env: dict[str, str], log: Path, health_url: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    wait_healthy(health_url, process=process, timeout_s=30, log=log)
    return process


class Run:
    """The processes, the load and the samples of one benchmark run."""

    def __init__(self, workdir: Path, concurrency: int) -> None:
        self.workdir = workdir
        self.concurrency = concurrency
        self.ports = {"a": free_port(), "b": free_port(), "gateway": free_port()}
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.results: list[tuple[float, int]] = []  # (finished at, status)
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.stopping = False

    def start_replica(self, name: str) -> None:
        port = self.ports[name]
        self.processes[name] = start(
            [sys.executable, "-m", "services.fake_upstream", "--port", str(port)],
            env=self.env,
            log=self.workdir / f"replica-{name}.log",
            health_url=f"http://127.0.0.1:{port}/health",
        )

    def start_gateway(self) -> None:
        urls = ",".join(f"http://127.0.0.1:{self.ports[n]}" for n in ("a", "b"))
        models = write_models_file(self.workdir / "models.yaml", {"duo": chat_entry(urls)})
        port = self.ports["gateway"]
        self.processes["gateway"] = start(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
            env={
                **self.env,
                "CITADEL_ADMIN_KEY": KEY,
                "CITADEL_CONFIG_PATH": str(models),
                "CITADEL_PROFILE": "",
                "CITADEL_AUDIT_SPOOL_DIR": str(self.workdir / "spool"),
                "CITADEL_LOG_LEVEL": "warning",
            },
            log=self.workdir / "gateway.log",
            health_url=f"http://127.0.0.1:{port}/health",
        )

    async def client(self, session: aiohttp.ClientSession) -> None:
        url = f"http://127.0.0.1:{self.ports['gateway']}/v1/chat/completions"
        body = {"model": "duo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        headers = {"Authorization": f"Bearer {KEY}"}
        while not self.stopping:
            try:
                async with session.post(url, json=body, headers=headers) as response:
                    await response.read()
                    status = response.status
            except aiohttp.ClientError:
                status = 0
            self.results.append((time.monotonic(), status))

    async def sampler(self, session: aiohttp.ClientSession) -> None:
        """Every 50 ms: each replica's request count, the gateway's retries and its readiness verdict."""
        while not self.stopping:
            sample: dict[str, float] = {}
            for name in ("a", "b"):
                try:
                    async with session.get(f"http://127.0.0.1:{self.ports[name]}/_stats") as response:
                        sample[name] = float((await response.json())["requests"])
                except aiohttp.ClientError:
                    sample[name] = -1.0
            base = f"http://127.0.0.1:{self.ports['gateway']}"
            async with session.get(f"{base}/metrics", headers={"Authorization": f"Bearer {KEY}"}) as response:
                text = await response.text() if response.status == 200 else ""
            sample["retries"] = sum(float(v) for v in RETRIES.findall(text)) if text else -1.0
            if not text:
                # Only without /metrics: each readiness call probes the replicas itself, which would hasten
                # the recovery this benchmark measures.
                async with session.get(f"{base}/health/ready") as response:
                    detail = (await response.json())["checks"]["model:duo"]["detail"]
                sample["in_rotation"] = float(detail.split(" ", 1)[0])
            self.samples.append((time.monotonic(), sample))
            await asyncio.sleep(0.05)


def window(results: list[tuple[float, int]], start: float, end: float) -> tuple[int, int]:
    inside = [status for at, status in results if start <= at < end]
    return len(inside), sum(1 for status in inside if status != 200)


def first_time(samples: list[tuple[float, dict[str, float]]], after: float, test: Any) -> float | None:
    return next((at for at, sample in samples if at >= after and test(sample)), None)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="citadel-failover-") as tmp:
        bench = Run(Path(tmp), args.concurrency)
        try:
            for name in ("a", "b"):
                bench.start_replica(name)
            bench.start_gateway()
            progress(f"load: {args.concurrency} clients; a is killed at {args.before}s, restarted {args.down}s later")
            connector = aiohttp.TCPConnector(limit=args.concurrency + 4)
            async with aiohttp.ClientSession(connector=connector) as session:
                tasks = [asyncio.create_task(bench.client(session)) for _ in range(args.concurrency)]
                tasks.append(asyncio.create_task(bench.sampler(session)))
                started = time.monotonic()
                await asyncio.sleep(args.before)
                killed_at = time.monotonic()
                stop(bench.processes.pop("a"), sig=signal.SIGKILL)
                progress("replica a killed")
                await asyncio.sleep(args.down)
                restarted_at = time.monotonic()
                bench.start_replica("a")
                progress(f"replica a started again ({time.monotonic() - restarted_at:.2f}s to its own health)")
                await asyncio.sleep(args.after)
                bench.stopping = True
                await asyncio.gather(*tasks)
                ended = time.monotonic()
        finally:
            for process in bench.processes.values():
                stop(process, sig=signal.SIGKILL)
            # What the gateway had to say about the failure (its warnings), counted by message.
            warnings = Counter(
                re.sub(r'"(ts|request_id)":"[^"]*",?', "", line)
                for line in (bench.workdir / "gateway.log").read_text().splitlines()
                if '"level":"warning"' in line or "WARNING" in line
            )
    samples = bench.samples
    total, errors = window(bench.results, started, ended)
    down_total, down_errors = window(bench.results, killed_at, restarted_at)
    uses_metrics = samples[-1][1]["retries"] >= 0
    if uses_metrics:
        # The first sample at which the retry counter had reached the value it kept until the restart.
        final = next(sample["retries"] for at, sample in reversed(samples) if at < restarted_at)
        settled = first_time(samples, killed_at, lambda s: s["retries"] == final)
    else:  # a gateway without /metrics (CITADEL_METRICS_PUBLIC=false)
        settled = first_time(samples, killed_at, lambda s: s["in_rotation"] == 1)
    first_served = first_time(samples, restarted_at, lambda s: s["a"] > 0)
    shared = None
    for (at0, s0), (at1, s1) in itertools.pairwise(samples):
        if at0 >= restarted_at and s0["a"] >= 0:
            gained_a, gained_b = s1["a"] - s0["a"], s1["b"] - s0["b"]
            if gained_a + gained_b > 0 and gained_a / (gained_a + gained_b) >= 1 / 3:
                shared = at1
                break
    return {
        "concurrency": args.concurrency,
        "requests": total,
        "throughput_rps": round(total / (ended - started), 1),
        "errors": errors,
        "error_rate_pct": round(100 * errors / max(total, 1), 3),
        "errors_by_status": dict(Counter(status for _, status in bench.results if status != 200)),
        "errors_while_down": down_errors,
        "requests_while_down": down_total,
        "all_on_survivor_s": round(settled - killed_at, 3) if settled else 0.0,
        "all_on_survivor_measured_by": "retry counter" if uses_metrics else "readiness",
        "recovery_first_request_s": round(first_served - restarted_at, 3) if first_served else None,
        "recovery_third_of_traffic_s": round(shared - restarted_at, 3) if shared else None,
        "health_interval_s": float(os.environ.get("CITADEL_HEALTH_INTERVAL_S", "5")),
        "gateway_warnings": dict(warnings.most_common(5)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--before", type=float, default=5.0, help="seconds of load before the kill")
    parser.add_argument("--down", type=float, default=8.0, help="seconds replica a stays down")
    parser.add_argument("--after", type=float, default=10.0, help="seconds of load after the restart")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    for name, value in figures.items():
        print(f"{name:32} {value}")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"failover-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(figures, indent=2))
    progress(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
