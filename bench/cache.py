"""Response cache benchmark: what a cache lookup adds to a request, on a miss and on a hit, against a local Redis.

Run from the repo root: `python -m bench.cache [--lookups N] [--concurrency C]`.
It starts its own Redis (services.redis.LocalRedis, pinned to the last CPU when taskset exists; this process is
pinned to CPU 0), and talks to it with the gateway's own client and policy (gateway.redisconn: create_redis,
RedisPolicy) on uvloop, as the gateway runs. For a small (1 KB) and a large (32 KB answer, 16 KB prompt) request:
  key        cache_key() + decide(): the CPU cost every cacheable request pays before Redis is asked
  get        a bare cache.get() answered nil, without key, decide or policy: the Redis round trip alone
  miss       key + decide + GET through the policy, answered nil: what a miss adds before the model is asked
  hit        key + decide + GET through the policy, answered with the body: what a hit costs instead of the model
  store      put() awaited (SET PX): off the response's path (put_later), but Redis and the loop pay it
  replay     replay_stream() of a stored stream of 200 events, drained (the large case only)
  hits/s     C tasks doing hit lookups at once, for the loop's ceiling
N sequential lookups per case after a warm-up; p50/p99/max in microseconds.
Prints a table and writes bench/results/cache-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from gateway.auth import Principal, Role
from gateway.cache import ResponseCache, cache_key, decide, replay_stream
from gateway.catalog import ModelSpec
from gateway.inference import Prepared
from gateway.redisconn import RedisPolicy, create_redis
from services.redis import LocalRedis
from tests.support.catalogs import chat_entry
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
PINNED = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] / 1000  # noqa: E731
    return {"p50_us": pick(0.5), "p99_us": pick(0.99), "max_us": ordered[-1] / 1000, "n": len(ordered)}


def request(prompt_bytes: int, *, stream: bool = False) -> Prepared:
    spec = ModelSpec(name="bench", **chat_entry("http://x", upstream_model="upstream"))  # type: ignore[arg-type]
    payload = {
        "model": "upstream",
        "messages": [{"role": "user", "content": "x" * prompt_bytes}],
        "temperature": 0,
        "max_tokens": 256,
    }
    return Prepared(endpoint="chat", spec=spec, requested_name="bench", payload=orjson.dumps(payload), stream=stream)


def answer(size: int) -> bytes:
    body = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench"}
    body["choices"] = [{"index": 0, "message": {"role": "assistant", "content": "y" * size}, "finish_reason": "stop"}]
    return orjson.dumps(body)


def stream_body(events: int, text: int) -> bytes:
    chunk = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench"}
    one = b"data: " + orjson.dumps({**chunk, "choices": [{"index": 0, "delta": {"content": "z" * text}}]}) + b"\n\n"
    return one * events + b"data: [DONE]\n\n"


async def timed(n: int, step: Callable[[int], Awaitable[Any]]) -> list[int]:
    for i in range(min(1000, n)):  # warm-up
        await step(i)
    gc.collect()
    gc.disable()
    samples = []
    try:
        for i in range(n):
            t0 = time.perf_counter_ns()
            await step(i)
            samples.append(time.perf_counter_ns() - t0)
    finally:
        gc.enable()
    return samples


async def run_case(
    cache: ResponseCache, policy: RedisPolicy, name: str, prompt: int, body: bytes, lookups: int
) -> dict[str, Any]:
    prepared = request(prompt)
    headers: dict[str, str] = {}
    hit_caller = Principal(key_id=uuid.uuid4(), name="hit", role=Role.USER)
    misses = [Principal(key_id=uuid.uuid4(), name="miss", role=Role.USER) for _ in range(64)]
    await cache.put(cache_key(hit_caller, prepared), body)

    async def key_only(i: int) -> None:
        decide(prepared, headers)
        cache_key(misses[i % 64], prepared)

    async def lookup(principal: Principal) -> bytes | None:
        if not decide(prepared, headers).read:
            raise AssertionError("the benchmark request must be cacheable")
        key = cache_key(principal, prepared)
        return await policy.call("cache", lambda: cache.get(key), fallback=None)

    async def miss(i: int) -> None:
        assert await lookup(misses[i % 64]) is None

    async def hit(_: int) -> None:
        assert await lookup(hit_caller) is not None

    async def raw_get(i: int) -> None:
        assert await cache.get(store_keys[0] + ":absent") is None

    store_keys = [f"citadel:cache:v1:bench:{i}" for i in range(lookups)]

    async def store(i: int) -> None:
        await cache.put(store_keys[i % len(store_keys)], body)

    result: dict[str, Any] = {"prompt_bytes": prompt, "answer_bytes": len(body)}
    for label, step in (("key", key_only), ("get", raw_get), ("miss", miss), ("hit", hit), ("store", store)):
        result[label] = percentiles(await timed(lookups, step))
    print(f"[bench] {name}: done", file=sys.stderr, flush=True)
    return result


async def replay_case(lookups: int) -> dict[str, Any]:
    body = stream_body(200, 40)

    async def replay(_: int) -> None:
        async for _chunk in replay_stream(body):
            pass

    return {"events": 201, "stream_bytes": len(body), **percentiles(await timed(max(100, lookups // 10), replay))}


async def throughput(cache: ResponseCache, policy: RedisPolicy, concurrency: int, seconds: float) -> float:
    prepared = request(1024)
    caller = Principal(key_id=uuid.uuid4(), name="tp", role=Role.USER)
    key = cache_key(caller, prepared)
    await cache.put(key, answer(1024))
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            decide(prepared, {})
            k = cache_key(caller, prepared)
            assert await policy.call("cache", functools.partial(cache.get, k), fallback=None) is not None
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def bench(url: str, lookups: int, concurrency: int) -> dict[str, Any]:
    client = create_redis(url, timeout_ms=100)
    policy = RedisPolicy(deadline_s=0.3)
    cache = ResponseCache(client, ttl_s=300, max_entry_bytes=1 << 20)
    try:
        await client.ping()
        cases: dict[str, Any] = {
            "small": await run_case(cache, policy, "small", 1024, answer(1024), lookups),
            "large": await run_case(cache, policy, "large", 16 * 1024, answer(32 * 1024), lookups),
        }
        cases["replay"] = await replay_case(lookups)
        cases[f"hits_per_s_c{concurrency}"] = round(await throughput(cache, policy, concurrency, 3.0))
        assert policy.total() == 0, f"the policy saw Redis failures during the benchmark: {dict(policy.events)}"
        return cases
    finally:
        await client.aclose()


def table(cases: dict[str, Any], concurrency: int) -> str:
    lines = [f"{'case':<8}{'step':<8}{'p50 us':>10}{'p99 us':>10}{'max us':>10}"]
    for name in ("small", "large"):
        for step in ("key", "get", "miss", "hit", "store"):
            s = cases[name][step]
            lines.append(f"{name:<8}{step:<8}{s['p50_us']:>10.1f}{s['p99_us']:>10.1f}{s['max_us']:>10.1f}")
    r = cases["replay"]
    lines.append(f"{'stream':<8}{'replay':<8}{r['p50_us']:>10.1f}{r['p99_us']:>10.1f}{r['max_us']:>10.1f}")
    lines.append(f"hit lookups/s at concurrency {concurrency}: {cases[f'hits_per_s_c{concurrency}']:,}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cache", description=__doc__.split("\n")[0])
    parser.add_argument("--lookups", type=int, default=20000, help="sequential lookups per case and step")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    if PINNED:
        os.sched_setaffinity(0, {0})
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as workdir:
        server = LocalRedis(free_port(), data_dir=Path(workdir))
        server.start()
        try:
            if PINNED and server.pid is not None:
                os.sched_setaffinity(server.pid, {(os.cpu_count() or 2) - 1})
            try:
                import uvloop

                runner: Any = uvloop.run
            except ImportError:  # pragma: no cover
                runner = asyncio.run
            cases = runner(bench(server.url, args.lookups, args.concurrency))
        finally:
            server.stop()
    print(table(cases, args.concurrency))
    report = {
        "benchmark": "cache",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "lookups": args.lookups,
        "pinned": PINNED,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "kernel": platform.release()},
        "cases": cases,
    }
    out = ROOT / "bench" / "results" / f"cache-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
