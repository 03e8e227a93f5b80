"""Throughput of one chat model: clients at a concurrency for a duration; requests and completion tokens per
second, and the latency under that load."""

from __future__ import annotations

import asyncio
import math
import time

from .client import NO_STORE, chat_body, describe, fresh_nonce
from .report import Summary, Target
from .state import RunState


async def measure_throughput(run: RunState) -> None:
    model = run.throughput_model
    if model is None:
        run.targets.append(
            Target(
                id="throughput",
                area="throughput",
                title="throughput",
                status="skip",
                reason="no chat model to load",
            )
        )
        return
    options = run.options
    run.progress.phase(f"throughput: {model}, {options.concurrency} clients, {options.duration_s:g} s")
    durations: list[float] = []
    errors: list[str] = []
    tokens = 0
    hits = 0
    limit = next((m.latency_target_ms for m in run.models if m.name == model), None)
    started = time.perf_counter()
    deadline = started + options.duration_s
    finished_at = started

    async def worker() -> None:
        nonlocal tokens, hits, finished_at
        while time.perf_counter() < deadline:
            exchange = await run.client.call(
                "POST", "/v1/chat/completions", body=chat_body(model, options, fresh_nonce()), headers=NO_STORE
            )
            finished_at = max(finished_at, time.perf_counter())
            if exchange.headers.get("X-Cache", "").upper() == "HIT":
                hits += 1
            if exchange.ok:
                durations.append(exchange.ms)
                usage = exchange.body.get("usage") if isinstance(exchange.body, dict) else None
                if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                    tokens += usage["completion_tokens"]
            else:
                errors.append(describe(exchange))

    async def ticker() -> None:
        for _ in range(math.ceil(options.duration_s)):
            await asyncio.sleep(min(1.0, max(deadline - time.perf_counter(), 0.0)))
            run.progress.advance()

    ticking = asyncio.create_task(ticker())
    await asyncio.gather(*(worker() for _ in range(options.concurrency)))
    await ticking
    run.cache_hits += hits
    elapsed = max(finished_at - started, 1e-9)
    completed = len(durations) + len(errors)
    rps = len(durations) / elapsed
    summary = Summary.of(durations, errors=len(errors))
    details = {
        "model": model,
        "concurrency": options.concurrency,
        "duration_s": options.duration_s,
        "elapsed_s": round(elapsed, 2),
        "requests": completed,
        "succeeded": len(durations),
        "errors": len(errors),
        "requests_per_s": round(rps, 3),
        "completion_tokens": tokens,
        "completion_tokens_per_s": round(tokens / elapsed, 2),
        "latency_under_load": summary.as_dict(),
        "latency_target_ms": limit,
        "cache_hits": hits,
    }
    under_load = f"p50 {summary.p50_ms or 0:.0f} ms, p95 {summary.p95_ms or 0:.0f} ms under load"
    reason = (
        f"{len(durations)} of {completed} requests in {elapsed:.1f} s at concurrency {options.concurrency}; "
        f"{tokens / elapsed:.1f} completion tokens/s; {under_load}"
    )
    demo = " (demo model)" if run.info(model).demo else ""
    title = f"{model}: throughput at concurrency {options.concurrency}{demo}"
    failure = None
    if errors:
        failure = f"{len(errors)} of {completed} requests failed (first: {errors[0]}); {reason}"
    elif not durations:
        failure = "no request completed within the duration"
    elif options.min_rps is not None and rps < options.min_rps:
        failure = f"below --min-rps; {reason}"
    run.targets.append(
        Target(
            id="throughput",
            area="throughput",
            title=title,
            status="fail" if failure else "pass",
            reason=failure or reason,
            measured=f"{rps:.2f} req/s, {tokens / elapsed:.1f} tokens/s",
            requirement="no errors" + (f", >= {options.min_rps:g} req/s" if options.min_rps is not None else ""),
            value=round(rps, 3),
            limit=options.min_rps,
            unit="req/s",
            details=details,
        )
    )
