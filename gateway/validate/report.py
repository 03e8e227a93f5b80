"""Typed results of a validation run, and its two reports: validation-report.md and validation-report.json.

Every requirement checked is a `Target` with a status (`pass`, `fail`, `skip`) and the reason for it; the run
passes when no target fails and at least one was measured. Percentiles interpolate linearly between the two
nearest ranks (numpy's default, `statistics.quantiles(method="inclusive")`): with few samples p95 lies between
the two slowest, never beyond the slowest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

Status = Literal["pass", "fail", "skip"]
SCHEMA = "citadel-validation-report/1"
MARKDOWN_NAME = "validation-report.md"
JSON_NAME = "validation-report.json"
DEMO_WARNING = "latencies of the demo model say nothing about real weights"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) of `values`, linear between the nearest ranks; None without values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be between 0 and 100, not {q}")
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Durations (ms) of the successful requests of one measurement, and how many failed."""

    count: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    min_ms: float | None
    max_ms: float | None
    mean_ms: float | None

    @classmethod
    def of(cls, durations_ms: Sequence[float], *, errors: int = 0) -> Summary:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 2)

        return cls(
            count=len(durations_ms),
            errors=errors,
            p50_ms=rounded(percentile(durations_ms, 50)),
            p95_ms=rounded(percentile(durations_ms, 95)),
            min_ms=rounded(min(durations_ms)) if durations_ms else None,
            max_ms=rounded(max(durations_ms)) if durations_ms else None,
            mean_ms=rounded(sum(durations_ms) / len(durations_ms)) if durations_ms else None,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Target:
    """One requirement: what was measured against what limit, and the verdict with its reason."""

    id: str  # stable, for machines: "latency.phi3.p95", "postgres.admin.audit"
    area: str  # gateway, latency, throughput, postgres, vectors, prometheus, grafana
    title: str
    status: Status
    reason: str
    measured: str = ""  # for people: "212.4 ms"
    requirement: str = ""  # for people: "<= 300 ms"
    value: float | None = None
    limit: float | None = None
    unit: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def at_most(
    *,
    id: str,
    area: str,
    title: str,
    value: float | None,
    limit: float,
    unit: str,
    reason: str,
    details: dict[str, Any] | None = None,
    fail_reason: str | None = None,
) -> Target:
    """A target met when `value` <= `limit`; `fail_reason` (errors, cache hits) fails it whatever the value."""
    if value is None:
        status: Status = "fail"
        why = fail_reason or "nothing was measured"
    elif fail_reason:
        status, why = "fail", fail_reason
    else:
        status = "pass" if value <= limit else "fail"
        why = reason
    return Target(
        id=id,
        area=area,
        title=title,
        status=status,
        reason=why,
        measured=_number(value, unit),
        requirement=f"<= {_plain(limit)} {unit}".strip(),
        value=value,
        limit=limit,
        unit=unit,
        details=details or {},
    )


def _plain(value: float) -> str:
    """A limit as written in a requirement: 1,500 or 2.5."""
    return f"{int(value):,}" if value == int(value) else f"{value:,.2f}".rstrip("0")


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return f"{text} {unit}".strip()


@dataclass
class ModelInfo:
    name: str
    kind: str  # chat | embedding
    display_name: str | None
    demo: bool | None  # None: could not be told
    demo_basis: str  # how `demo` was decided
    latency_target_ms: float | None
    target_source: str  # "/status/data", "config/models.yaml", "none"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Environment:
    """The host the validation ran on, and what the gateway says about itself."""

    validator_host: str
    os: str
    python: str
    cpu_count: int | None
    cpus_usable: int | None
    cpu_model: str | None
    memory_gib: float | None
    memory_available_gib: float | None
    citadel_package_version: str
    gateway_url: str
    gateway_version: str | None
    gateway_version_source: str
    gateway_same_host: bool | None  # the URL names this host (then the figures above are the gateway's host too)
    readiness: dict[str, str] = field(default_factory=dict)  # check name -> status (+ latency), /health/ready

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RequestShapes:
    """What was sent, so that a reader can repeat the run or compare two."""

    chat: dict[str, Any]
    embedding: dict[str, Any]
    requests_per_model: int
    warmup_per_model: int
    concurrency: int
    duration_s: float
    throughput_model: str | None
    timeout_s: float
    cache: str
    admin_queries: list[str]
    database_queries: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ValidationReport:
    started_at: datetime
    finished_at: datetime
    environment: Environment
    models: list[ModelInfo]
    shapes: RequestShapes
    targets: list[Target]
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {status: sum(1 for t in self.targets if t.status == status) for status in ("pass", "fail", "skip")}

    @property
    def passed(self) -> bool:
        """No target failed and at least one was measured."""
        counts = self.counts()
        return counts["fail"] == 0 and counts["pass"] > 0

    def demo_caveat(self) -> str | None:
        """The warning at the top of both reports, when a model is (or may be) the demo model."""
        demo = [m.name for m in self.models if m.demo]
        unknown = [m.name for m in self.models if m.demo is None]
        undecided = ""
        if unknown:
            undecided = (
                f"Whether {_names(unknown)} {'serves' if len(unknown) == 1 else 'serve'} real weights could not be "
                "told (no demo flag in /v1/models, no --profile, no --demo)"
            )
        if demo:
            one = len(demo) == 1
            caveat = (
                f"{_names(demo)} {'is' if one else 'are'} the offline demo model (tiny, random weights: its answers "
                f"are noise), so {DEMO_WARNING}. {'Its' if one else 'Their'} latency and throughput figures show "
                "only that the serving path works end to end on this deployment; they certify nothing about the "
                "speed of a real model."
            )
            return f"{caveat} {undecided}." if undecided else caveat
        if unknown:
            return (
                f"{undecided}: if {'it serves' if len(unknown) == 1 else 'they serve'} the demo model, {DEMO_WARNING}."
            )
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "verdict": "pass" if self.passed else "fail",
            "summary": self.counts(),
            "demo_caveat": self.demo_caveat(),
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "duration_s": round((self.finished_at - self.started_at).total_seconds(), 1),
            "environment": self.environment.as_dict(),
            "models": [m.as_dict() for m in self.models],
            "request_shapes": self.shapes.as_dict(),
            "targets": [t.as_dict() for t in self.targets],
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def to_markdown(self) -> str:
        counts = self.counts()
        seconds = (self.finished_at - self.started_at).total_seconds()
        env = self.environment
        lines = ["# Citadel LLM Server: validation report", ""]
        caveat = self.demo_caveat()
        if caveat:
            heading = "Demo model." if any(m.demo for m in self.models) else "Demo model?"
            lines += [f"> **{heading}** {caveat}", ""]
        verdict = "PASS" if self.passed else "FAIL"
        lines += [
            f"**Verdict: {verdict}**: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped "
            f"(of {len(self.targets)} targets). Gateway {env.gateway_url}, {_when(self.started_at)} to "
            f"{_when(self.finished_at)} ({seconds:.0f} s).",
            "",
            "## Targets",
            "",
            "| result | target | measured | requirement | why |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {t.status.upper()} | {_cell(t.title)} | {_cell(t.measured or '-')} | {_cell(t.requirement or '-')} "
            f"| {_cell(t.reason)} |"
            for t in self.targets
        ]
        lines += ["", "## Environment", ""]
        lines += _environment_lines(env)
        lines += [
            "",
            "## Models",
            "",
            "| model | kind | demo model | latency target | target from |",
            "|---|---|---|---|---|",
        ]
        for m in self.models:
            demo = {True: "yes", False: "no", None: "unknown"}[m.demo]
            target = f"{m.latency_target_ms:g} ms" if m.latency_target_ms is not None else "-"
            lines.append(f"| {m.name} | {m.kind} | {demo} ({_cell(m.demo_basis)}) | {target} | {m.target_source} |")
        lines += ["", "## Request shapes", ""]
        lines += _shape_lines(self.shapes)
        if self.notes:
            lines += ["", "## Notes", ""]
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def write_reports(report: ValidationReport, out_dir: Path) -> tuple[Path, Path]:
    """validation-report.md and validation-report.json in `out_dir` (created if missing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown, document = out_dir / MARKDOWN_NAME, out_dir / JSON_NAME
    markdown.write_text(report.to_markdown(), encoding="utf-8")
    document.write_text(report.to_json(), encoding="utf-8")
    return markdown, document


def _names(names: Iterable[str]) -> str:
    listed = list(names)
    return listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " and " + listed[-1]


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _environment_lines(env: Environment) -> list[str]:
    memory = f"{env.memory_gib:.1f} GiB memory" if env.memory_gib is not None else "memory unknown"
    if env.memory_available_gib is not None:
        memory += f" ({env.memory_available_gib:.1f} GiB available)"
    cpus = f"{env.cpu_count} CPUs" if env.cpu_count is not None else "CPUs unknown"
    if env.cpus_usable is not None and env.cpus_usable != env.cpu_count:
        cpus += f" ({env.cpus_usable} usable by this process)"
    if env.cpu_model:
        cpus += f", {env.cpu_model}"
    same = {
        True: "yes: the host above runs it",
        False: "no: the host above is only the validating one",
        None: "unknown",
    }
    version = env.gateway_version or "unknown"
    lines = [
        f"- Validated from: `{env.validator_host}`, {env.os}, Python {env.python}",
        f"- Hardware: {cpus}; {memory}",
        f"- Gateway: {env.gateway_url}, version {version} ({env.gateway_version_source}); "
        f"citadel package of the validator: {env.citadel_package_version}",
        f"- Gateway on this host: {same[env.gateway_same_host]}",
    ]
    if env.readiness:
        checks = ", ".join(f"{name} {state}" for name, state in env.readiness.items())
        lines.append(f"- Readiness (/health/ready) at the start: {checks}")
    return lines


def _shape_lines(shapes: RequestShapes) -> list[str]:
    chat = json.dumps(shapes.chat, ensure_ascii=False)
    embedding = json.dumps(shapes.embedding, ensure_ascii=False)
    throughput = shapes.throughput_model or "none"
    return [
        f"- Chat latency: POST /v1/chat/completions, non-streaming, one request at a time, "
        f"{shapes.requests_per_model} per chat model after {shapes.warmup_per_model} warm-up request(s) not counted: "
        f"`{chat}`",
        f"- Embedding latency: POST /v1/embeddings, the same way: `{embedding}`",
        f"- Throughput: the chat request above against `{throughput}` from {shapes.concurrency} concurrent "
        f"clients, each sending its next request when the last one ends, for {shapes.duration_s:g} s",
        f"- Response cache: {shapes.cache}",
        f"- Request timeout: {shapes.timeout_s:g} s; latency is the client's: request sent to the whole body read",
        "- PostgreSQL through the admin API (each timed end to end over HTTP, so an upper bound of the query "
        "time): " + ", ".join(f"`{q}`" for q in shapes.admin_queries),
        "- PostgreSQL directly (--database-url): "
        + (", ".join(f"`{q}`" for q in shapes.database_queries) if shapes.database_queries else "not given"),
    ]
