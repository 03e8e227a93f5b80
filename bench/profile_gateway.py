"""Where a gateway request's CPU goes: one worker under cProfile, wrk on the uncached path, the top costs per request.

Run from the repo root: `python -m bench.profile_gateway [--duration S] [--top N]`. The same processes and request
as bench.overhead (PostgreSQL audit, Redis limits with a user key, metrics, the JSON log line; temperature 0.7),
the gateway pinned to CPU 0 and everything else to CPU 1. cProfile slows the worker about 2x, so read the
shares, not the absolute microseconds. Prints the functions by own time and by package, per request; a
coroutine counts one call per resumption, so async functions show about 2 calls per request.
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import signal
import sys
import tempfile
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

from bench.load import Request, throughput
from bench.servers import MODEL, start_backends, start_gateway
from tests.support.processes import stop

PACKAGES = ("gateway", "starlette", "fastapi", "uvicorn", "aiohttp", "redis", "sqlalchemy", "asyncpg", "prometheus",
            "pydantic", "orjson", "logging", "json", "asyncio", "uvloop", "yarl", "multidict", "httptools")  # fmt: skip


def progress(message: str) -> None:
    print(f"[profile] {message}", file=sys.stderr, flush=True)


def package(filename: str) -> str:
    """The package a profiled function belongs to, by its file path ("~" is a C builtin)."""
    parts = Path(filename).parts
    for name in PACKAGES:
        if name in parts or any(p.startswith(name) for p in parts[-3:]):
            return name
    return "builtins" if filename == "~" else "other"


def summarise(stats_path: Path, requests: float, top: int) -> None:
    stats = pstats.Stats(str(stats_path))
    table = stats.stats  # type: ignore[attr-defined]  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    by_package: dict[str, float] = defaultdict(float)
    for (filename, _, _), (_, _, own, _, _) in table.items():
        by_package[package(filename)] += own
    total = sum(by_package.values())
    print(f"\nProfiled CPU per request: {total / requests * 1e6:.0f} us (under cProfile), {requests:,.0f} requests")
    print("By package (own time, us per request):")
    for name, own in sorted(by_package.items(), key=lambda kv: -kv[1]):
        print(f"  {name:12} {own / requests * 1e6:8.1f}  {100 * own / total:5.1f}%")
    print(f"Top {top} functions by own time (us per request; calls per request):")
    rows = sorted(table.items(), key=lambda kv: -kv[1][2])[:top]
    for (filename, line, name), (_, calls, own, cumulative, _) in rows:
        where = f"{'/'.join(Path(filename).parts[-2:])}:{line} {name}"
        per = [own / requests * 1e6, cumulative / requests * 1e6, calls / requests]
        print(f"  {per[0]:7.1f} own {per[1]:8.1f} cum {per[2]:6.1f}x  {where}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--save", type=Path, help="keep the raw profile here (for pstats: callers, callees)")
    args = parser.parse_args()
    pinned = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    with tempfile.TemporaryDirectory(prefix="citadel-profile-") as tmp, ExitStack() as stack:
        workdir, out = Path(tmp), Path(tmp) / "gateway.prof"
        backends = start_backends(
            stack, workdir, load_cpu=1, pinned=pinned, postgres=True, redis=True, progress=progress
        )
        progress("starting the gateway under cProfile (CPU 0)")
        gateway = start_gateway(stack, backends, workers=1, cpus="0" if pinned else None, name="gateway", profile=out)
        request = Request(MODEL, key=backends.key)
        os.kill(gateway.process.pid, signal.SIGUSR1)  # profile from here: start-up and imports left out
        progress(f"load: {args.concurrency} connections, {args.duration:g} s, uncached")
        figures = throughput(
            gateway.port, gateway.process.pid, request, concurrency=args.concurrency, duration=args.duration,
            cpus="1" if pinned else None, tmp=workdir,
        )  # fmt: skip
        stop(gateway.process)
        print(f"under cProfile: {figures['rps']:.0f} req/s, {figures['cpu_us_per_request']} us CPU per request")
        summarise(out, figures["rps"] * args.duration, args.top)
        if args.save is not None:
            shutil.copyfile(out, args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
