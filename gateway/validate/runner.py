"""The measurements of `citadel validate`, against a running deployment.

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

import asyncio
import base64
import contextlib
import glob
import hashlib
import ipaddress
import json
import math
import os
import platform
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

import aiohttp
import yaml
from yarl import URL

from .. import __version__
from .report import (
    Environment,
    ModelInfo,
    RequestShapes,
    Summary,
    Target,
    ValidationReport,
    at_most,
)

CHAT_PROMPT = "In one short sentence, what is a citadel?"
EMBEDDING_INPUT = "A citadel is a fortress that stands above a city."
POSTGRES_LIMIT_MS = 100.0  # the requirement: database queries under 100 ms
NO_STORE = {"Cache-Control": "no-store"}
ADMIN_QUERIES = {"audit": "/admin/audit?limit=50", "usage": "/admin/usage"}
VECTOR_DOCUMENTS = [
    ("doc-1", "The gateway checks every API key and records each request in the audit log."),
    ("doc-2", "To bake bread, mix flour, water, salt and yeast, let the dough rise, then bake it hot."),
    ("doc-3", "Prometheus scrapes metrics every fifteen seconds and evaluates the alert rules."),
]
VECTOR_QUERY, VECTOR_EXPECTED = "How do I make a loaf of bread?", "doc-2"
DemoMode = Literal["auto", "yes", "no"]


class UsageError(Exception):
    """The run cannot start as asked (a wrong key, an unreadable models file): exit status 2."""


@dataclass
class Options:
    url: str
    key: str
    requests: int = 20
    concurrency: int = 4
    duration_s: float = 10.0
    max_tokens: int = 16
    temperature: float = 0.7
    timeout_s: float = 120.0
    warmup: int = 1
    models: list[str] | None = None  # None: every model the key may use
    throughput_model: str | None = None  # None: the chat model with the smallest latency target
    min_rps: float | None = None
    config_path: Path | None = None
    profile: str | None = None
    profile_basis: str = ""
    demo: DemoMode = "auto"
    database_url: str | None = None
    prometheus_url: str | None = None
    grafana_url: str | None = None
    grafana_token: str | None = None


class Progress:
    """A one-line bar redrawn with \\r on a terminal; elsewhere a plain line per phase and per 10%."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None, width: int = 28) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.width = width
        self.total = 1
        self.done = 0
        self.label = ""
        self._printed_tenth = -1

    def plan(self, total: int) -> None:
        self.total = max(total, 1)

    def phase(self, label: str) -> None:
        self.label = label
        if self.tty:
            self._draw()
        else:
            self._line()

    def advance(self, steps: int = 1) -> None:
        self.done = min(self.done + steps, self.total)
        if self.tty:
            self._draw()
        elif self.done * 10 // self.total > self._printed_tenth:
            self._line()

    def finish(self) -> None:
        self.done, self.label = self.total, "done"
        if self.tty:
            self._draw()
            self.stream.write("\n")
        else:
            self._line()
        self.stream.flush()

    def _fraction(self) -> float:
        return self.done / self.total

    def _draw(self) -> None:
        filled = int(self.width * self._fraction())
        bar = "#" * filled + "." * (self.width - filled)
        text = f"\r[{bar}] {self._fraction():4.0%} {self.done}/{self.total} {self.label}"
        self.stream.write(text[:120].ljust(100))
        self.stream.flush()

    def _line(self) -> None:
        self._printed_tenth = self.done * 10 // self.total
        self.stream.write(f"[validate] {self._fraction():4.0%} ({self.done}/{self.total}) {self.label}\n")
        self.stream.flush()


@dataclass
class Exchange:
    """One timed HTTP exchange: status None when no answer came (connection refused, timeout)."""

    status: int | None
    ms: float
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def describe(exchange: Exchange) -> str:
    """A short reason for a failed exchange: `503 model_unavailable: ...`, `timeout after 120 s`."""
    if exchange.status is None:
        return exchange.error or "no answer"
    detail = ""
    if isinstance(exchange.body, dict) and isinstance(exchange.body.get("error"), dict):
        error = exchange.body["error"]
        detail = f" {error.get('code') or error.get('type') or ''}: {error.get('message', '')}".rstrip(": ")
    elif exchange.error:
        detail = f" {exchange.error}"
    return f"{exchange.status}{detail}"[:300]


class Client:
    """aiohttp with the timing, the key and the error handling of every call of the run."""

    def __init__(self, session: aiohttp.ClientSession, base: str, *, headers: dict[str, str], timeout_s: float):
        self.session, self.base, self.headers, self.timeout_s = session, base.rstrip("/"), headers, timeout_s

    async def call(
        self, method: str, path: str, *, body: Any = None, headers: dict[str, str] | None = None
    ) -> Exchange:
        url = path if path.startswith(("http://", "https://")) else f"{self.base}{path}"
        started = time.perf_counter()
        try:
            async with self.session.request(
                method,
                url,
                json=body,
                headers={**self.headers, **(headers or {})},
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as response:
                raw = await response.read()
                ms = (time.perf_counter() - started) * 1000
                try:
                    parsed: Any = json.loads(raw) if raw else None
                except ValueError:
                    parsed = None
                return Exchange(response.status, ms, parsed, dict(response.headers))
        except TimeoutError:
            return Exchange(None, (time.perf_counter() - started) * 1000, error=f"timeout after {self.timeout_s:g} s")
        except aiohttp.ClientError as exc:
            message = str(exc) or type(exc).__name__
            return Exchange(None, (time.perf_counter() - started) * 1000, error=f"{type(exc).__name__}: {message}")


def _nonce() -> str:
    return uuid.uuid4().hex[:12]


def chat_body(model: str, options: Options, nonce: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": f"{CHAT_PROMPT} (validation {nonce})"}],
        "max_tokens": options.max_tokens,
        "temperature": options.temperature,
        "stream": False,
    }


def embedding_body(model: str, nonce: str) -> dict[str, Any]:
    return {"model": model, "input": f"{EMBEDDING_INPUT} (validation {nonce})"}


# ---------------------------------------------------------------- the run


async def validate(options: Options, progress: Progress) -> ValidationReport:
    """Measure everything `options` asks for and return the report (UsageError: the run cannot start)."""
    started = datetime.now(UTC)
    raw_config = load_models_file(options.config_path)
    connector = aiohttp.TCPConnector(limit=max(options.concurrency, 1) + 4)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = Client(session, options.url, headers=_auth(options.key), timeout_s=options.timeout_s)
        run = _Run(options, client, session, progress, raw_config)
        await run.execute()
    progress.finish()
    return ValidationReport(
        started_at=started,
        finished_at=datetime.now(UTC),
        environment=run.environment,
        models=run.models,
        shapes=run.shapes(),
        targets=run.targets,
        notes=run.notes,
    )


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class _Run:
    def __init__(
        self,
        options: Options,
        client: Client,
        session: aiohttp.ClientSession,
        progress: Progress,
        raw_config: dict[str, Any] | None,
    ) -> None:
        self.options, self.client, self.session, self.progress = options, client, session, progress
        self.raw_config = raw_config
        self.targets: list[Target] = []
        self.notes: list[str] = []
        self.models: list[ModelInfo] = []
        self.environment = host_environment(options.url)
        self.throughput_model: str | None = None
        self.cache_hits = 0
        self.database_queries: list[str] = []

    def shapes(self) -> RequestShapes:
        chat = chat_body("<model>", self.options, "<nonce>")
        return RequestShapes(
            chat=chat,
            embedding=embedding_body("<model>", "<nonce>"),
            requests_per_model=self.options.requests,
            warmup_per_model=self.options.warmup,
            concurrency=self.options.concurrency,
            duration_s=self.options.duration_s,
            throughput_model=self.throughput_model,
            timeout_s=self.options.timeout_s,
            cache=(
                "never answers: chat samples (temperature > 0, no seed), every prompt and input ends in a nonce of "
                f"its own, every request sends Cache-Control: no-store; answers marked X-Cache: HIT: {self.cache_hits}"
            ),
            admin_queries=[f"GET {path}" for path in ADMIN_QUERIES.values()],
            database_queries=self.database_queries,
        )

    async def execute(self) -> None:
        self.progress.phase("gateway")
        cards = await self._discover()
        if cards is None:
            self.progress.advance()
            return
        chat = [c for c in cards if c.get("kind", "chat") == "chat"]
        embedding = [c for c in cards if c.get("kind") == "embedding"]
        self.throughput_model = self._pick_throughput_model(chat)
        per_model = self.options.warmup + self.options.requests
        admin_steps = self.options.requests * len(ADMIN_QUERIES)
        database_steps = self.options.requests * len(DATABASE_QUERIES) if self.options.database_url else 0
        self.progress.plan(
            1
            + per_model * (len(chat) + len(embedding))
            + (math.ceil(self.options.duration_s) if self.throughput_model else 0)
            + admin_steps
            + database_steps
            + 4
            + (3 if self.options.prometheus_url else 0)
            + (1 if self.options.grafana_url else 0)
        )
        self.progress.advance()  # the discovery
        for card in chat + embedding:
            await self._latency(card)
        await self._throughput()
        await self._admin_postgres()
        await self._direct_postgres()
        await self._vectors(embedding)
        await self._prometheus()
        await self._grafana()

    # ------------------------------------------------------------ discovery

    async def _discover(self) -> list[dict[str, Any]] | None:
        """The gateway answers, the key works; the models, their targets and demo status; version, readiness."""
        health = await self.client.call("GET", "/health")
        if not health.ok:
            self.targets.append(
                Target(
                    id="gateway.reachable",
                    area="gateway",
                    title="gateway answers /health",
                    status="fail",
                    reason=f"GET /health: {describe(health)}; nothing else could be measured",
                    requirement="200",
                )
            )
            return None
        listing = await self.client.call("GET", "/v1/models")
        if listing.status in (401, 403):
            raise UsageError(f"the gateway refused the key on GET /v1/models ({describe(listing)}); pass --key")
        if not listing.ok or not isinstance(listing.body, dict):
            self.targets.append(
                Target(
                    id="gateway.reachable",
                    area="gateway",
                    title="gateway answers /health and /v1/models",
                    status="fail",
                    reason=f"GET /v1/models: {describe(listing)}",
                )
            )
            return None
        cards = [c for c in listing.body.get("data", []) if isinstance(c, dict) and "id" in c]
        if self.options.models:
            unknown = sorted(set(self.options.models) - {c["id"] for c in cards})
            if unknown:
                raise UsageError(f"--models names models this key cannot see on the gateway: {', '.join(unknown)}")
            cards = [c for c in cards if c["id"] in self.options.models]
        self.targets.append(
            Target(
                id="gateway.reachable",
                area="gateway",
                title="gateway answers /health and /v1/models",
                status="pass",
                reason=f"/health in {health.ms:.1f} ms; /v1/models lists {len(cards)} model(s) for this key",
                measured=f"{health.ms:.1f} ms",
                requirement="200",
                value=round(health.ms, 2),
                unit="ms",
            )
        )
        await self._describe_gateway()
        targets_from_gateway = await self._status_targets()
        self.models = [self._model_info(card, targets_from_gateway) for card in cards]
        return cards

    async def _describe_gateway(self) -> None:
        schema = await self.client.call("GET", "/openapi.json")
        version = schema.body.get("info", {}).get("version") if schema.ok and isinstance(schema.body, dict) else None
        if version:
            self.environment.gateway_version, self.environment.gateway_version_source = str(version), "/openapi.json"
        else:
            self.environment.gateway_version_source = f"not exposed (/openapi.json: {describe(schema)})"
        ready = await self.client.call("GET", "/health/ready")
        if isinstance(ready.body, dict) and isinstance(ready.body.get("checks"), dict):
            states = {"overall": str(ready.body.get("status"))}
            for name, check in ready.body["checks"].items():
                if isinstance(check, dict):
                    states[name] = str(check.get("status"))
            self.environment.readiness = states

    async def _status_targets(self) -> dict[str, float]:
        """Each model's latency_target_ms as the gateway itself has it (its status page data), if it answers."""
        status = await self.client.call("GET", "/status/data")
        if not status.ok or not isinstance(status.body, dict):
            return {}
        return {
            str(row["model"]): float(row["latency_target_ms"])
            for row in status.body.get("models", [])
            if isinstance(row, dict) and isinstance(row.get("latency_target_ms"), int | float) and "model" in row
        }

    def _model_info(self, card: dict[str, Any], targets: dict[str, float]) -> ModelInfo:
        name = str(card["id"])
        target: float | None = targets.get(name)
        source = "/status/data"
        if target is None:
            entry = ((self.raw_config or {}).get("models") or {}).get(name) or {}
            configured = entry.get("latency_target_ms") if isinstance(entry, dict) else None
            target = float(configured) if isinstance(configured, int | float) else None
            source = f"{self.options.config_path}" if target is not None else "none"
        demo, basis = demo_status(card, self.options, self.raw_config)
        return ModelInfo(
            name=name,
            kind=str(card.get("kind", "chat")),
            display_name=card.get("display_name"),
            demo=demo,
            demo_basis=basis,
            latency_target_ms=target,
            target_source=source,
        )

    def _pick_throughput_model(self, chat: list[dict[str, Any]]) -> str | None:
        names = [str(c["id"]) for c in chat]
        if self.options.throughput_model:
            if self.options.throughput_model not in names:
                raise UsageError(f"--throughput-model {self.options.throughput_model} is not a chat model listed")
            return self.options.throughput_model
        if not names:
            return None
        targets = {m.name: m.latency_target_ms for m in self.models}
        return min(names, key=lambda n: (targets.get(n) is None, targets.get(n) or 0, names.index(n)))

    def _info(self, name: str) -> ModelInfo:
        return next(m for m in self.models if m.name == name)

    # ------------------------------------------------------------ latency

    async def _latency(self, card: dict[str, Any]) -> None:
        name = str(card["id"])
        info = self._info(name)
        chat = info.kind != "embedding"
        self.progress.phase(f"{name} latency")
        path = "/v1/chat/completions" if chat else "/v1/embeddings"
        options = self.options
        limit = card.get("max_tokens")
        if chat and isinstance(limit, int) and limit < options.max_tokens:
            self.notes.append(f"{name}: max_tokens lowered to its limit of {limit}")
        durations: list[float] = []
        errors: list[str] = []
        hits = 0
        for index in range(options.warmup + options.requests):
            body = chat_body(name, options, _nonce()) if chat else embedding_body(name, _nonce())
            if chat and isinstance(limit, int):
                body["max_tokens"] = min(options.max_tokens, limit)
            exchange = await self.client.call("POST", path, body=body, headers=NO_STORE)
            self.progress.advance()
            if index < options.warmup:
                continue
            if exchange.headers.get("X-Cache", "").upper() == "HIT":
                hits += 1
            if exchange.ok:
                durations.append(exchange.ms)
            else:
                errors.append(describe(exchange))
        self.cache_hits += hits
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
                self.targets.append(
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
            self.targets.append(
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

    # ------------------------------------------------------------ throughput

    async def _throughput(self) -> None:
        model = self.throughput_model
        if model is None:
            self.targets.append(
                Target(
                    id="throughput",
                    area="throughput",
                    title="throughput",
                    status="skip",
                    reason="no chat model to load",
                )
            )
            return
        options = self.options
        self.progress.phase(f"throughput: {model}, {options.concurrency} clients, {options.duration_s:g} s")
        durations: list[float] = []
        errors: list[str] = []
        tokens = 0
        hits = 0
        limit = next((m.latency_target_ms for m in self.models if m.name == model), None)
        started = time.perf_counter()
        deadline = started + options.duration_s
        finished_at = started

        async def worker() -> None:
            nonlocal tokens, hits, finished_at
            while time.perf_counter() < deadline:
                exchange = await self.client.call(
                    "POST", "/v1/chat/completions", body=chat_body(model, options, _nonce()), headers=NO_STORE
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
                self.progress.advance()

        ticking = asyncio.create_task(ticker())
        await asyncio.gather(*(worker() for _ in range(options.concurrency)))
        await ticking
        self.cache_hits += hits
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
        demo = " (demo model)" if self._info(model).demo else ""
        title = f"{model}: throughput at concurrency {options.concurrency}{demo}"
        failure = None
        if errors:
            failure = f"{len(errors)} of {completed} requests failed (first: {errors[0]}); {reason}"
        elif not durations:
            failure = "no request completed within the duration"
        elif options.min_rps is not None and rps < options.min_rps:
            failure = f"below --min-rps; {reason}"
        self.targets.append(
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

    # ------------------------------------------------------------ PostgreSQL

    async def _admin_postgres(self) -> None:
        for name, path in ADMIN_QUERIES.items():
            self.progress.phase(f"PostgreSQL via GET {path}")
            target_id, title = f"postgres.admin.{name}", f"PostgreSQL: GET {path} (p95)"
            durations: list[float] = []
            errors: list[str] = []
            for index in range(self.options.requests):
                exchange = await self.client.call("GET", path)
                self.progress.advance()
                if exchange.status == 403 and index == 0:
                    self.progress.advance(self.options.requests - 1)
                    self.targets.append(
                        Target(
                            id=target_id,
                            area="postgres",
                            title=title,
                            status="skip",
                            reason="the key is not an admin's (403): pass an admin key to time the admin API",
                        )
                    )
                    break
                if exchange.ok:
                    durations.append(exchange.ms)
                else:
                    errors.append(describe(exchange))
            else:
                summary = Summary.of(durations, errors=len(errors))
                self.targets.append(
                    at_most(
                        id=target_id,
                        area="postgres",
                        title=title,
                        value=summary.p95_ms,
                        limit=POSTGRES_LIMIT_MS,
                        unit="ms",
                        reason=(
                            f"{summary.count} requests, p50 {summary.p50_ms or 0:.1f} ms; HTTP round trip included, "
                            "so an upper bound of the query time"
                        ),
                        details={"path": path, **summary.as_dict()},
                        fail_reason=f"{len(errors)} of {self.options.requests} failed (first: {errors[0]})"
                        if errors
                        else None,
                    )
                )

    async def _direct_postgres(self) -> None:
        url = self.options.database_url
        if not url:
            self.targets.append(
                Target(
                    id="postgres.direct",
                    area="postgres",
                    title="PostgreSQL: direct SELECTs",
                    status="skip",
                    reason="no --database-url given (the admin API timings above stand for it)",
                )
            )
            return
        self.progress.phase("PostgreSQL directly")
        self.database_queries = [f"{name}: {sql}" for name, (sql, _) in DATABASE_QUERIES.items()]
        results = await time_database_queries(url, self.options.requests, self.progress.advance)
        for name, outcome in results.items():
            target_id, title = f"postgres.direct.{name}", f"PostgreSQL: {name} (p95, direct)"
            if isinstance(outcome, str):
                self.targets.append(
                    Target(
                        id=target_id,
                        area="postgres",
                        title=title,
                        status="fail",
                        reason=outcome,
                        requirement=f"<= {POSTGRES_LIMIT_MS:g} ms",
                    )
                )
                continue
            summary = Summary.of(outcome)
            self.targets.append(
                at_most(
                    id=target_id,
                    area="postgres",
                    title=title,
                    value=summary.p95_ms,
                    limit=POSTGRES_LIMIT_MS,
                    unit="ms",
                    reason=f"{summary.count} executions, p50 {summary.p50_ms or 0:.1f} ms, one connection (asyncpg)",
                    details={"sql": DATABASE_QUERIES[name][0], **summary.as_dict()},
                )
            )

    # ------------------------------------------------------------ vectors

    async def _vectors(self, embedding: list[dict[str, Any]]) -> None:
        self.progress.phase("vector store round trip")
        title = "vector store: create, upsert 3, search, delete"
        if not embedding:
            self.progress.advance(4)
            self.targets.append(
                Target(
                    id="vectors.roundtrip",
                    area="vectors",
                    title=title,
                    status="skip",
                    reason="no embedding model listed for this key",
                )
            )
            return
        model = str(embedding[0]["id"])
        collection = f"citadel-validate-{_nonce()}"
        base = f"/v1/vectors/collections/{collection}"
        steps: dict[str, float] = {}
        failure: str | None = None
        top: str | None = None
        created_maybe = False
        done = 0

        async def step(name: str, method: str, path: str, body: Any = None) -> Exchange:
            nonlocal done
            exchange = await self.client.call(method, path, body=body)
            done += 1
            self.progress.advance()
            if exchange.ok:
                steps[name] = exchange.ms
            return exchange

        try:
            create = await step("create", "POST", "/v1/vectors/collections", {"name": collection, "model": model})
            # No answer, or a 5xx: the collection may exist all the same, so the delete is tried.
            created_maybe = create.ok or create.status is None or create.status >= 500
            if not create.ok:
                failure = f"create: {describe(create)}"
                return
            documents = [{"id": doc_id, "text": text} for doc_id, text in VECTOR_DOCUMENTS]
            upsert = await step("upsert", "POST", f"{base}/documents", {"documents": documents})
            if not upsert.ok:
                failure = f"upsert: {describe(upsert)}"
                return
            search = await step("search", "POST", f"{base}/search", {"query": VECTOR_QUERY, "top_k": 3})
            hits = search.body.get("data") if search.ok and isinstance(search.body, dict) else None
            if not search.ok or not hits:
                failure = f"search: {describe(search) if not search.ok else 'no documents found'}"
                return
            top = str(hits[0].get("id")) if isinstance(hits[0], dict) else None
        finally:
            if created_maybe:
                delete = await step("delete", "DELETE", base)
                if not delete.ok:
                    left = f"delete: {describe(delete)}: remove collection {collection} by hand"
                    failure = f"{failure}; {left}" if failure else left
            self.progress.advance(4 - done)
            self._vector_target(title, model, collection, steps, failure, top)

    def _vector_target(
        self, title: str, model: str, collection: str, steps: dict[str, float], failure: str | None, top: str | None
    ) -> None:
        total = sum(steps.values())
        timings = ", ".join(f"{step} {ms:.0f} ms" for step, ms in steps.items())
        ranking = f"top hit {top} ({'as expected' if top == VECTOR_EXPECTED else f'expected {VECTOR_EXPECTED}'})"
        self.targets.append(
            Target(
                id="vectors.roundtrip",
                area="vectors",
                title=title,
                status="fail" if failure else "pass",
                reason=failure or f"{timings}; {ranking}; temporary collection removed",
                measured=f"{total:.0f} ms in all" if steps else "-",
                requirement="every step succeeds, collection removed",
                value=round(total, 2) if steps else None,
                unit="ms",
                details={
                    "model": model,
                    "collection": collection,
                    "steps_ms": {k: round(v, 2) for k, v in steps.items()},
                    "top_hit": top,
                    "expected_top_hit": VECTOR_EXPECTED,
                },
            )
        )

    # ------------------------------------------------------------ Prometheus and Grafana

    async def _prometheus(self) -> None:
        base = self.options.prometheus_url
        if not base:
            for what in ("gateway_up", "metrics", "rules"):
                self.targets.append(
                    Target(
                        id=f"prometheus.{what}",
                        area="prometheus",
                        title=f"Prometheus: {what.replace('_', ' ')}",
                        status="skip",
                        reason="no --prometheus-url given",
                    )
                )
            return
        self.progress.phase("Prometheus")
        prometheus = Client(self.session, base, headers={}, timeout_s=min(self.options.timeout_s, 15))
        up = await prometheus.call("GET", "/api/v1/query?query=up")
        self.progress.advance()
        self.targets.append(prometheus_up_target(up))
        names = await prometheus.call(
            "GET", "/api/v1/query?" + _query('count by (__name__) ({__name__=~"citadel_llm_.+"})')
        )
        self.progress.advance()
        self.targets.append(prometheus_metrics_target(names))
        rules = await prometheus.call("GET", "/api/v1/rules")
        self.progress.advance()
        self.targets.append(prometheus_rules_target(rules, expected_rule_groups(self.options.config_path)))
        for target in self.targets[-3:]:
            target.details["prometheus_url"] = str(URL(base).with_user(None))

    async def _grafana(self) -> None:
        base = self.options.grafana_url
        title = "Grafana: Citadel dashboards present"
        if not base:
            self.targets.append(
                Target(
                    id="grafana.dashboards", area="grafana", title=title, status="skip", reason="no --grafana-url given"
                )
            )
            return
        self.progress.phase("Grafana")
        url = URL(base)
        headers = {"Authorization": f"Bearer {self.options.grafana_token}"} if self.options.grafana_token else {}
        if url.user and not headers:
            pair = f"{url.user}:{url.password or ''}".encode()
            headers = {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}
        grafana = Client(self.session, str(url.with_user(None)), headers=headers, timeout_s=15)
        search = await grafana.call("GET", "/api/search?type=dash-db&limit=5000")
        self.progress.advance()
        self.targets.append(grafana_target(search, expected_dashboards(self.options.config_path)))
        self.targets[-1].details["grafana_url"] = str(url.with_user(None))


# ---------------------------------------------------------------- checks (pure: tested without a network)


def _query(expr: str) -> str:
    return str(URL.build(query={"query": expr}).query_string)


def _prometheus_data(exchange: Exchange) -> Any:
    if exchange.ok and isinstance(exchange.body, dict) and exchange.body.get("status") == "success":
        return exchange.body.get("data")
    return None


def prometheus_up_target(exchange: Exchange) -> Target:
    title = "Prometheus: scrapes the gateway (up == 1)"
    data = _prometheus_data(exchange)
    if data is None:
        return Target(
            id="prometheus.gateway_up",
            area="prometheus",
            title=title,
            status="fail",
            reason=f"query `up`: {describe(exchange)}",
        )
    series = [s for s in data.get("result", []) if "gateway" in str(s.get("metric", {}).get("job", ""))]
    up = [s for s in series if str(s.get("value", [0, "0"])[1]) == "1"]
    jobs = sorted({f"{s['metric'].get('job')}/{s['metric'].get('instance')}" for s in series})
    if not series:
        return Target(
            id="prometheus.gateway_up",
            area="prometheus",
            title=title,
            status="fail",
            reason="no `up` series of a job named *gateway*: Prometheus does not scrape the gateway",
        )
    return Target(
        id="prometheus.gateway_up",
        area="prometheus",
        title=title,
        status="pass" if len(up) == len(series) else "fail",
        reason=f"{len(up)} of {len(series)} gateway targets up: {', '.join(jobs)}",
        measured=f"{len(up)}/{len(series)} up",
        requirement="every gateway target up",
        details={"targets": jobs},
    )


def prometheus_metrics_target(exchange: Exchange) -> Target:
    title = "Prometheus: has the gateway's citadel_llm_ metrics"
    data = _prometheus_data(exchange)
    if data is None:
        return Target(
            id="prometheus.metrics",
            area="prometheus",
            title=title,
            status="fail",
            reason=f"query for citadel_llm_ series: {describe(exchange)}",
        )
    names = sorted(str(s.get("metric", {}).get("__name__")) for s in data.get("result", []))
    present = "citadel_llm_requests_total" in names
    return Target(
        id="prometheus.metrics",
        area="prometheus",
        title=title,
        status="pass" if names else "fail",
        reason=(
            f"{len(names)} citadel_llm_ metric names stored"
            + ("" if present else " (citadel_llm_requests_total not yet: no scrape since the first request?)")
            if names
            else "no citadel_llm_ series in Prometheus"
        ),
        measured=f"{len(names)} metrics",
        requirement=">= 1 citadel_llm_ metric",
        value=float(len(names)),
        details={"metrics": names},
    )


def prometheus_rules_target(exchange: Exchange, expected: set[str]) -> Target:
    title = "Prometheus: citadel alert rules loaded"
    data = _prometheus_data(exchange)
    if data is None:
        return Target(
            id="prometheus.rules",
            area="prometheus",
            title=title,
            status="fail",
            reason=f"GET /api/v1/rules: {describe(exchange)}",
        )
    groups = {str(g.get("name")): g for g in data.get("groups", []) if isinstance(g, dict)}
    loaded = {name for name in groups if name.startswith("citadel")}
    wanted = expected or {"citadel*"}
    missing = sorted(expected - loaded) if expected else ([] if loaded else ["citadel*"])
    rules = [rule for name in loaded for rule in groups[name].get("rules", [])]
    broken = sorted(str(rule.get("name")) for rule in rules if rule.get("health") not in (None, "ok", "unknown"))
    reason = f"{len(loaded)} citadel groups, {len(rules)} rules loaded"
    if missing:
        reason = f"missing groups: {', '.join(missing)}; {reason}"
    if broken:
        reason += f"; rules failing to evaluate: {', '.join(broken)}"
    return Target(
        id="prometheus.rules",
        area="prometheus",
        title=title,
        status="fail" if missing or broken else "pass",
        reason=reason,
        measured=f"{len(loaded)} groups",
        requirement=(f"groups {', '.join(sorted(wanted))}" if expected else "at least one citadel group"),
        value=float(len(loaded)),
        details={"loaded": sorted(loaded), "expected": sorted(expected), "failing_rules": broken},
    )


def grafana_target(exchange: Exchange, expected: dict[str, str]) -> Target:
    """`expected`: uid -> title of the dashboards config/grafana provisions (empty: any "Citadel" title)."""
    title = "Grafana: Citadel dashboards present"
    if exchange.status is None:
        return Target(
            id="grafana.dashboards",
            area="grafana",
            title=title,
            status="skip",
            reason=f"Grafana is not reachable ({describe(exchange)})",
        )
    if not exchange.ok or not isinstance(exchange.body, list):
        return Target(
            id="grafana.dashboards",
            area="grafana",
            title=title,
            status="fail",
            reason=f"GET /api/search: {describe(exchange)} (pass --grafana-token, or user:password@ in the URL)",
        )
    found = {str(d.get("uid")): str(d.get("title")) for d in exchange.body if isinstance(d, dict)}
    if expected:
        missing = [f"{t} ({uid})" for uid, t in sorted(expected.items()) if uid not in found]
    else:
        missing = [] if any(t.lower().startswith("citadel") for t in found.values()) else ["a Citadel dashboard"]
    present = sorted(t for uid, t in found.items() if uid in expected or t.lower().startswith("citadel"))
    return Target(
        id="grafana.dashboards",
        area="grafana",
        title=title,
        status="fail" if missing else "pass",
        reason=f"missing: {', '.join(missing)}" if missing else f"present: {', '.join(present)}",
        measured=f"{len(present)} dashboards",
        requirement=", ".join(sorted(expected.values())) if expected else "a Citadel dashboard",
        value=float(len(present)),
        details={"present": present, "expected": expected},
    )


# ---------------------------------------------------------------- the models file, demo status


def load_models_file(path: Path | None) -> dict[str, Any] | None:
    """The raw models file (latency targets, the profiles' demo servers), None without one."""
    if path is None:
        return None
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read the models file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"the models file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
        raise UsageError(f"the models file {path} has no top-level 'models' mapping")
    return raw


def demo_status(card: dict[str, Any], options: Options, raw_config: dict[str, Any] | None) -> tuple[bool | None, str]:
    """Whether a model is the demo model, and why we think so (None: cannot tell)."""
    if isinstance(card.get("demo"), bool):
        return bool(card["demo"]) or options.demo == "yes", "flag in /v1/models"
    if options.demo != "auto":
        return options.demo == "yes", f"--demo {options.demo}"
    profile = options.profile
    if profile is None:
        return None, "no demo flag in /v1/models and the deployment's profile is unknown: pass --profile or --demo"
    if not profile:
        return None, "no profile: each model runs whatever weights its server was given (pass --demo)"
    profiles = (raw_config or {}).get("profiles") or {}
    servers = (profiles.get(profile) or {}).get("servers") or {} if isinstance(profiles, dict) else {}
    if not servers:
        return None, f"profile {profile!r} ({options.profile_basis}) is not in the models file"
    for server_name, server in servers.items():
        if isinstance(server, dict) and str(card["id"]) in (server.get("serves") or []):
            weights = str(server.get("weights", ""))
            demo = weights.startswith("demo:")
            return demo, f"profile {profile} ({options.profile_basis}): server {server_name}, weights {weights}"
    return None, f"profile {profile!r} ({options.profile_basis}) has no server for it"


def expected_rule_groups(config_path: Path | None) -> set[str]:
    """The rule groups of config/prometheus/rules/*.yml next to the models file (empty if not found)."""
    if config_path is None:
        return set()
    groups: set[str] = set()
    for file in sorted(glob.glob(str(config_path.parent / "prometheus" / "rules" / "*.yml"))):
        with contextlib.suppress(OSError, yaml.YAMLError):
            raw = yaml.safe_load(Path(file).read_text())
            groups |= {str(g["name"]) for g in (raw or {}).get("groups", []) if isinstance(g, dict) and "name" in g}
    return groups


def expected_dashboards(config_path: Path | None) -> dict[str, str]:
    """uid -> title of config/grafana/dashboards/*.json next to the models file (empty if not found)."""
    if config_path is None:
        return {}
    found: dict[str, str] = {}
    for file in sorted(glob.glob(str(config_path.parent / "grafana" / "dashboards" / "*.json"))):
        with contextlib.suppress(OSError, ValueError):
            raw = json.loads(Path(file).read_text())
            if isinstance(raw, dict) and raw.get("uid"):
                found[str(raw["uid"])] = str(raw.get("title", raw["uid"]))
    return found


# ---------------------------------------------------------------- PostgreSQL directly

DATABASE_QUERIES: dict[str, tuple[str, bool]] = {
    # name: (SQL, takes the random key hash as $1)
    "round trip": ("SELECT 1", False),
    "key lookup": ("SELECT * FROM llm.api_keys WHERE key_hash = $1", True),
    "audit page": (
        "SELECT * FROM llm.audit_log WHERE occurred_at >= now() - interval '1 day' ORDER BY id DESC LIMIT 51",
        False,
    ),
    "usage": (
        "SELECT key_id, model, count(*), sum(prompt_tokens), sum(completion_tokens) FROM llm.audit_log "
        "WHERE kind = 'api' AND occurred_at >= now() - interval '1 day' GROUP BY key_id, model",
        False,
    ),
}


async def time_database_queries(url: str, repeats: int, advance: Callable[[int], None]) -> dict[str, list[float] | str]:
    """Each query `repeats` times on one connection: its durations (ms), or why it could not run."""
    import asyncpg

    from ..store.db import asyncpg_dsn

    unknown_hash = hashlib.sha256(os.urandom(32)).digest()
    results: dict[str, list[float] | str] = {}
    try:
        connection = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
    except (OSError, TimeoutError, ValueError, asyncpg.PostgresError) as exc:
        advance(repeats * len(DATABASE_QUERIES))
        return {name: f"cannot connect: {type(exc).__name__}: {exc}"[:300] for name in DATABASE_QUERIES}
    try:
        for name, (sql, takes_hash) in DATABASE_QUERIES.items():
            durations: list[float] = []
            try:
                for _ in range(repeats):
                    started = time.perf_counter()
                    await _fetch(connection.fetch(sql, unknown_hash) if takes_hash else connection.fetch(sql))
                    durations.append((time.perf_counter() - started) * 1000)
                    advance(1)
                results[name] = durations
            except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
                advance(repeats - len(durations))
                results[name] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        await connection.close()
    return results


async def _fetch(query: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(query, timeout=30)


# ---------------------------------------------------------------- the host


def host_environment(url: str) -> Environment:
    """This host (the one the validation runs on), and whether the URL points at it."""
    memory, available = _meminfo()
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    return Environment(
        validator_host=socket.gethostname(),
        os=platform.platform(),
        python=platform.python_version(),
        cpu_count=os.cpu_count(),
        cpus_usable=usable,
        cpu_model=_cpu_model(),
        memory_gib=memory,
        memory_available_gib=available,
        citadel_package_version=__version__,
        gateway_url=str(URL(url).with_user(None)),
        gateway_version=None,
        gateway_version_source="not asked",
        gateway_same_host=same_host(url),
    )


def same_host(url: str) -> bool | None:
    host = URL(url).host
    if not host:
        return None
    if host in ("localhost", socket.gethostname(), socket.getfqdn()):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            address = ipaddress.ip_address(socket.gethostbyname(host))
        except OSError:
            return None
    if address.is_loopback:
        return True
    try:
        own = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return None
    return str(address) in own


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _meminfo() -> tuple[float | None, float | None]:
    values: dict[str, float] = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, rest = line.split(":", 1)
            if name in ("MemTotal", "MemAvailable"):
                values[name] = int(rest.split()[0]) / 1024 / 1024  # kB -> GiB
    if "MemTotal" not in values:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            values["MemTotal"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    total, available = values.get("MemTotal"), values.get("MemAvailable")
    return (round(total, 1) if total else None), (round(available, 1) if available else None)
