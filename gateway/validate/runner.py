"""`validate()`: the run of `citadel validate` against a running deployment, its steps in order, and its report.

In order: the gateway itself (/health, /v1/models with the key, its version from /openapi.json, the latency
targets from /status/data, readiness); latency of every chat and embedding model (N requests one at a time);
throughput of one chat model at a concurrency for a duration; PostgreSQL query times through the admin API
(and directly with --database-url); a vector store round trip in a temporary collection, always removed;
Prometheus (the gateway scraped, its metrics and the citadel alert rules loaded) and Grafana (the dashboards),
when their URLs are given. Every request is timed by this client: from sending it to its whole body read.

Nothing here is answered from the response cache: chat requests sample (temperature > 0, no seed), every
prompt and input ends in a nonce of its own, and every request sends `Cache-Control: no-store`.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import aiohttp

from .client import Client, auth_headers, chat_body, embedding_body
from .database import ADMIN_QUERIES, DATABASE_QUERIES, time_admin_api, time_database
from .discovery import discover, pick_throughput_model
from .environment import host_environment
from .latency import measure_latency
from .models_file import load_models_file
from .observability import check_grafana, check_prometheus
from .options import Options
from .progress import Progress
from .report import RequestShapes, ValidationReport
from .state import RunState
from .throughput import measure_throughput
from .vectors import vector_roundtrip


async def validate(options: Options, progress: Progress) -> ValidationReport:
    """Measure everything `options` asks for and return the report (UsageError: the run cannot start)."""
    started = datetime.now(UTC)
    raw_config = load_models_file(options.config_path)
    connector = aiohttp.TCPConnector(limit=max(options.concurrency, 1) + 4)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = Client(session, options.url, headers=auth_headers(options.key), timeout_s=options.timeout_s)
        run = RunState(options, client, session, progress, raw_config, host_environment(options.url))
        await _execute(run)
    progress.finish()
    return ValidationReport(
        started_at=started,
        finished_at=datetime.now(UTC),
        environment=run.environment,
        models=run.models,
        shapes=_shapes(run),
        targets=run.targets,
        notes=run.notes,
    )


async def _execute(run: RunState) -> None:
    """Every step in the report's order; the progress bar planned once the models are known."""
    options, progress = run.options, run.progress
    progress.phase("gateway")
    cards = await discover(run)
    if cards is None:
        progress.advance()
        return
    chat = [c for c in cards if c.get("kind", "chat") == "chat"]
    embedding = [c for c in cards if c.get("kind") == "embedding"]
    run.throughput_model = pick_throughput_model(run, chat)
    per_model = options.warmup + options.requests
    admin_steps = options.requests * len(ADMIN_QUERIES)
    database_steps = options.requests * len(DATABASE_QUERIES) if options.database_url else 0
    progress.plan(
        1
        + per_model * (len(chat) + len(embedding))
        + (math.ceil(options.duration_s) if run.throughput_model else 0)
        + admin_steps
        + database_steps
        + 4  # the vector round trip's steps
        + (3 if options.prometheus_url else 0)
        + (1 if options.grafana_url else 0)
    )
    progress.advance()  # the discovery
    for card in chat + embedding:
        await measure_latency(run, card)
    await measure_throughput(run)
    await time_admin_api(run)
    await time_database(run)
    await vector_roundtrip(run, embedding)
    await check_prometheus(run)
    await check_grafana(run)


def _shapes(run: RunState) -> RequestShapes:
    """What the run sent, for the report: the request bodies, counts, and why no answer came from the cache."""
    options = run.options
    return RequestShapes(
        chat=chat_body("<model>", options, "<nonce>"),
        embedding=embedding_body("<model>", "<nonce>"),
        requests_per_model=options.requests,
        warmup_per_model=options.warmup,
        concurrency=options.concurrency,
        duration_s=options.duration_s,
        throughput_model=run.throughput_model,
        timeout_s=options.timeout_s,
        cache=(
            "never answers: chat samples (temperature > 0, no seed), every prompt and input ends in a nonce of "
            f"its own, every request sends Cache-Control: no-store; answers marked X-Cache: HIT: {run.cache_hits}"
        ),
        admin_queries=[f"GET {path}" for path in ADMIN_QUERIES.values()],
        database_queries=run.database_queries,
    )
