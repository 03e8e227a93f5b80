"""MTTR benchmark: kill -9 each kind of server of a `make run` stack under load and time the way back.

Run from the repo root: `python -m bench.mttr [--runs N] [--kinds gateway,redis,postgres,chat] [--concurrency C]`.
It starts a stack of its own as `make run` does (services.stack, on free ports, data in a temporary folder: the
real vLLM demo chat and embedding servers, PostgreSQL, Redis, the gateway), then C clients send requests in a
loop (chat completions and embeddings, alternating), and two probes ask each model server's own /health every
half second. For each run and each kind, the kind's main process gets SIGKILL and the clock runs until:
  gateway    a chat completion through the gateway answers 200
  redis      /health/ready says Redis is healthy
  postgres   GET /admin/keys (which needs the database) answers 200
  chat       a chat completion answers 200 (the demo chat server's start-up is most of it)
Requests that failed while it was down are counted per target: the killed kind's own requests may fail, the
others must not (the model servers' own probes for the gateway; embeddings for the chat server; chat and
embeddings for Redis and PostgreSQL, which the gateway does without meanwhile).
Prints a table (min-max and median over the runs) and writes bench/results/mttr-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from tests.support.supervised_stack import CHAT, EMBED, HEADERS, SupervisedStack, succeeds, supervised_stack, until

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("gateway", "redis", "postgres", "chat")
SERVER_OF = {"gateway": "gateway", "redis": "redis", "postgres": "postgres", "chat": "vllm-demo-chat"}
# Targets whose failures are expected while a kind is down (its own requests); every other target must not fail.
OWN_TARGETS = {
    "gateway": {"chat", "embeddings"},
    "redis": set(),
    "postgres": set(),
    "chat": {"chat", "demo-chat server (direct)"},
}
RECOVERY_TIMEOUT_S = {"gateway": 300.0, "redis": 120.0, "postgres": 120.0, "chat": 900.0}


def progress(message: str) -> None:
    print(f"[mttr {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(slots=True)
class Outcome:
    at: float
    target: str
    ok: bool


@dataclass
class Load:
    """Clients sending chat and embeddings through the gateway, and probes of each model server's own /health."""

    stack: SupervisedStack
    concurrency: int
    outcomes: list[Outcome] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for index in range(self.concurrency):
            self.threads.append(threading.Thread(target=self._client, args=(index,), daemon=True))
        self.threads.append(threading.Thread(target=self._probes, daemon=True))
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=90)

    def failed(self, target: str, since: float, until_: float) -> tuple[int, int]:
        """(failed, total) requests to `target` that ended between the two times."""
        window = [o for o in self.outcomes if o.target == target and since <= o.at <= until_]
        return sum(not o.ok for o in window), len(window)

    def targets(self) -> set[str]:
        return {o.target for o in self.outcomes}

    def _client(self, index: int) -> None:
        calls: list[tuple[str, str, Mapping[str, object]]] = [
            ("chat", "/v1/chat/completions", CHAT),
            ("embeddings", "/v1/embeddings", EMBED),
        ]
        turn = index
        with httpx.Client(base_url=self.stack.url, headers=HEADERS, timeout=60) as client:
            while not self.stopping.is_set():
                target, path, body = calls[turn % len(calls)]
                turn += 1
                try:
                    ok = client.post(path, json=body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.outcomes.append(Outcome(time.monotonic(), target, ok))
                if not ok:
                    time.sleep(0.2)  # a refused connection returns at once: do not spin

    def _probes(self) -> None:
        while not self.stopping.is_set():
            for server in ("demo-chat", "embed"):
                ok = self.stack.model_server_answers(server)
                self.outcomes.append(Outcome(time.monotonic(), f"{server} server (direct)", ok))
            time.sleep(0.5)


def recovered(stack: SupervisedStack, kind: str) -> Callable[[], bool]:
    if kind == "redis":

        def redis_healthy() -> bool:
            try:
                checks = httpx.get(f"{stack.url}/health/ready", timeout=10).json()["checks"]
            except (httpx.HTTPError, ValueError, KeyError):
                return False
            return bool(checks.get("redis", {}).get("status") == "healthy")

        return redis_healthy
    if kind == "postgres":
        return lambda: succeeds(lambda: stack.get("/admin/keys"))
    return lambda: succeeds(lambda: stack.post("/v1/chat/completions", CHAT))


@dataclass(slots=True)
class Kill:
    kind: str
    run: int
    mttr_s: float
    # target -> [failed, total] while it was down
    others: dict[str, list[int]]
    own: dict[str, list[int]]


def kill_once(stack: SupervisedStack, load: Load, kind: str, run: int) -> Kill:
    name = SERVER_OF[kind]
    pid = stack.pid(name)
    progress(f"run {run}: kill -9 {name} (pid {pid})")
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    mttr = until(recovered(stack, kind), timeout_s=RECOVERY_TIMEOUT_S[kind], what=name)
    back_at = time.monotonic()
    progress(f"run {run}: {name} back after {mttr:.1f}s")
    others: dict[str, list[int]] = {}
    own: dict[str, list[int]] = {}
    for target in sorted(load.targets()):
        failed, total = load.failed(target, killed_at, back_at)
        (own if target in OWN_TARGETS[kind] else others)[target] = [failed, total]
    return Kill(kind=kind, run=run, mttr_s=round(mttr, 2), others=others, own=own)


def summary(kills: list[Kill], kind: str) -> dict[str, object]:
    times = [k.mttr_s for k in kills if k.kind == kind]
    failed_others = sum(f for k in kills if k.kind == kind for f, _ in k.others.values())
    total_others = sum(t for k in kills if k.kind == kind for _, t in k.others.values())
    return {
        "runs": len(times),
        "min_s": min(times),
        "median_s": round(statistics.median(times), 2),
        "max_s": max(times),
        "other_requests_failed": failed_others,
        "other_requests": total_others,
    }


def print_report(kills: list[Kill], kinds: list[str], args: argparse.Namespace) -> None:
    load = os.getloadavg()
    print(f"\nMTTR: kill -9 of each server's main process under load ({args.concurrency} clients), {args.runs} run(s)")
    print(f"host: {os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"requests: chat {json.dumps(CHAT)}; embeddings {json.dumps(EMBED)}\n")
    print(f"{'killed':<10} {'MTTR min-max (median)':<26} {'others failed meanwhile':<24} back when")
    meaning = {
        "gateway": "a chat completion through it answers 200",
        "redis": "/health/ready says redis healthy",
        "postgres": "GET /admin/keys answers 200",
        "chat": "a chat completion answers 200",
    }
    for kind in kinds:
        s = summary(kills, kind)
        span = f"{s['min_s']:.1f}-{s['max_s']:.1f} s ({s['median_s']:.1f})"
        others = f"{s['other_requests_failed']} of {s['other_requests']}"
        print(f"{kind:<10} {span:<26} {others:<24} {meaning[kind]}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="kills of each kind")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {','.join(KINDS)}")
    parser.add_argument("--concurrency", type=int, default=2, help="clients sending requests meanwhile")
    args = parser.parse_args()
    unknown = set(args.kinds.split(",")) - set(KINDS)
    if unknown or args.runs < 1 or args.concurrency < 1:
        parser.error(f"--kinds takes {','.join(KINDS)}; --runs and --concurrency at least 1")
    return args


def main() -> int:
    args = parse_args()
    kinds = args.kinds.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="citadel-mttr-"))
    progress(f"starting a stack of its own (log {workdir / 'stack.log'}); the model servers take minutes")
    started = time.monotonic()
    kills: list[Kill] = []
    with supervised_stack(workdir / "stack.log") as stack:
        progress(f"stack ready after {time.monotonic() - started:.0f}s")
        load = Load(stack, args.concurrency)
        load.start()
        try:
            time.sleep(5)  # steady load before the first kill
            for run in range(1, args.runs + 1):
                for kind in kinds:
                    kills.append(kill_once(stack, load, kind, run))
                    time.sleep(3)  # let the load settle before the next kill
        finally:
            load.stop()
    print_report(kills, kinds, args)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"mttr-{time.strftime('%Y%m%d-%H%M%S')}.json"
    document = {
        "environment": {"cores": os.cpu_count(), "loadavg": os.getloadavg(), "platform": platform.platform()},
        "concurrency": args.concurrency,
        "requests": {"chat": CHAT, "embeddings": EMBED},
        "summary": {kind: summary(kills, kind) for kind in kinds},
        "kills": [asdict(k) for k in kills],
    }
    out.write_text(json.dumps(document, indent=2))
    print(f"\nwrote {out}")
    failed_others = sum(f for k in kills for f, _ in k.others.values())
    return 1 if failed_others else 0


if __name__ == "__main__":
    sys.exit(main())
