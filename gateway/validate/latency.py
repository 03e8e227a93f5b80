"""Latency of each model: N requests one at a time (after the warm-up), p50 and p95 against its target."""

from __future__ import annotations

from typing import Any

from .client import NO_STORE, chat_body, describe, embedding_body, fresh_nonce
from .report import Summary, Target, at_most
from .state import RunState


async def measure_latency(run: RunState, card: dict[str, Any]) -> None:
    name = str(card["id"])
    info = run.info(name)
    chat = info.kind != "embedding"
    run.progress.phase(f"{name} latency")
    path = "/v1/chat/completions" if chat else "/v1/embeddings"
    options = run.options
    limit = card.get("max_tokens")
    if chat and isinstance(limit, int) and limit < options.max_tokens:
        run.notes.append(f"{name}: max_tokens lowered to its limit of {limit}")
    durations: list[float] = []
    errors: list[str] = []
    hits = 0
    for index in range(options.warmup + options.requests):
        body = chat_body(name, options, fresh_nonce()) if chat else embedding_body(name, fresh_nonce())
        if chat and isinstance(limit, int):
            body["max_tokens"] = min(options.max_tokens, limit)
        exchange = await run.client.call("POST", path, body=body, headers=NO_STORE)
        run.progress.advance()
        if index < options.warmup:
            continue
        if exchange.headers.get("X-Cache", "").upper() == "HIT":
            hits += 1
        if exchange.ok:
            durations.append(exchange.ms)
        else:
            errors.append(describe(exchange))
    run.cache_hits += hits
    summary = Summary.of(durations, errors=len(errors))
    failure = None
    if errors:
        failure = f"{len(errors)} of {options.requests} requests failed (first: {errors[0]})"
    elif hits:
        failure = f"{hits} answers came from the response cache: the figures do not time the model"
    demo = " (demo model)" if info.demo else ""
    details = {"model": name, "endpoint": path, **summary.as_dict(), "cache_hits": hits}
    for label, value in (("p50", summary.p50_ms), ("p95", summary.p95_ms)):
        title = f"{name}: {label} latency{demo}"
        target_id = f"latency.{name}.{label}"
        if info.latency_target_ms is None:
            run.targets.append(
                Target(
                    id=target_id,
                    area="latency",
                    title=title,
                    status="skip",
                    reason="no latency_target_ms for this model (not in /status/data nor in the models file)",
                    measured=f"{value:.1f} ms" if value is not None else "-",
                    value=value,
                    unit="ms",
                    details=details,
                )
            )
            continue
        run.targets.append(
            at_most(
                id=target_id,
                area="latency",
                title=title,
                value=value,
                limit=info.latency_target_ms,
                unit="ms",
                reason=f"{summary.count} requests, 0 errors; target from {info.target_source}",
                details=details,
                fail_reason=failure,
            )
        )
