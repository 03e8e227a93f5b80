"""`citadel validate`: the requirements' validation run against a deployment URL, and its reports.

Exit status: 0 when every measured target passes, 1 when one fails (or the gateway does not answer),
2 when the run cannot start as asked (options, the key refused, an unreadable models file).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from .environment import same_host
from .options import Options, UsageError
from .progress import Progress
from .report import ValidationReport, write_reports
from .runner import validate

DEFAULT_CONFIG = Path("config") / "models.yaml"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text}")
    return value


def _temperature(text: str) -> float:
    value = _positive_float(text)
    if value > 2:
        raise argparse.ArgumentTypeError(f"must be more than 0 (sampled, so never cached) and at most 2: {text}")
    return value


def add_validate_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    validate_parser = commands.add_parser(
        "validate",
        help="measure a running deployment against its targets and write the production-readiness report",
        description=(
            "Latency p50/p95 of every model against its latency_target_ms, throughput at a concurrency, "
            "PostgreSQL query times against 100 ms, a vector store round trip, Prometheus and Grafana. "
            "Exit status 0 when every measured target passes, 1 otherwise, 2 on a usage error."
        ),
    )
    add = validate_parser.add_argument
    add("--url", default="http://127.0.0.1:8000", help="the gateway (default: http://127.0.0.1:8000)")
    add("--key", help="an admin API key (default: CITADEL_ADMIN_KEY from the environment or .env)")
    add("--requests", type=_positive_int, default=20, help="timed requests per model and per query (default 20)")
    add(
        "--warmup",
        type=int,
        choices=range(0, 11),
        default=1,
        metavar="N",
        help="untimed requests per model first (default 1)",
    )
    add("--concurrency", type=_positive_int, default=4, help="clients of the throughput run (default 4)")
    add("--duration", type=_positive_float, default=10.0, help="seconds of the throughput run (default 10)")
    add("--throughput-model", help="the chat model loaded (default: the one with the smallest latency target)")
    add("--min-rps", type=_positive_float, help="a throughput requirement in requests/s (default: none)")
    add("--max-tokens", type=_positive_int, default=16, help="max_tokens of each chat request (default 16)")
    add("--temperature", type=_temperature, default=0.7, help="sampling temperature, > 0 (default 0.7)")
    add("--timeout", type=_positive_float, default=120.0, help="seconds per request (default 120)")
    add("--models", help="comma-separated models to measure (default: every model the key may use)")
    add(
        "--config",
        type=Path,
        help="the models file, for latency targets the gateway does not expose and the profiles' demo servers "
        "(default: CITADEL_CONFIG_PATH, else config/models.yaml if present)",
    )
    add(
        "--profile",
        help="the deployment's profile in the models file, to tell demo models (default: "
        "CITADEL_PROFILE of the environment or .env when --url is this host)",
    )
    add(
        "--demo",
        choices=["auto", "yes", "no"],
        default="auto",
        help="whether the chat models serve the demo model (default auto: /v1/models, else --profile)",
    )
    add("--database-url", help="PostgreSQL to time SELECTs on directly (default: through the admin API only)")
    add("--prometheus-url", help="Prometheus to check for the gateway's metrics and the alert rules")
    add("--grafana-url", help="Grafana to check for the dashboards (user:password@ in the URL, or --grafana-token)")
    add("--grafana-token", help="a Grafana service account token (default: GRAFANA_TOKEN)")
    add("--out", type=Path, help="folder for validation-report.md and .json (default: the Markdown on stdout)")
    validate_parser.set_defaults(handler=run_validate)


def _env_value(name: str, env_file: Path = Path(".env")) -> str | None:
    """`name` from the environment, else from `.env` in the working directory."""
    if os.environ.get(name):
        return os.environ[name]
    if env_file.exists():
        from dotenv import dotenv_values

        return dotenv_values(env_file).get(name) or None
    return None


def options_from(args: argparse.Namespace) -> Options:
    """The run's options; UsageError when something needed is missing."""
    key = args.key or _env_value("CITADEL_ADMIN_KEY")
    if not key:
        raise UsageError("no key: pass --key or set CITADEL_ADMIN_KEY (environment or .env)")
    config = args.config
    if config is None:
        configured = _env_value("CITADEL_CONFIG_PATH")
        config = Path(configured) if configured else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    profile, basis = args.profile, "--profile"
    if profile is None and same_host(args.url):
        profile, basis = _env_value("CITADEL_PROFILE"), "CITADEL_PROFILE of this host"
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    return Options(
        url=args.url,
        key=key,
        requests=args.requests,
        concurrency=args.concurrency,
        duration_s=args.duration,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        timeout_s=args.timeout,
        warmup=args.warmup,
        models=models,
        throughput_model=args.throughput_model,
        min_rps=args.min_rps,
        config_path=config,
        profile=profile,
        profile_basis=basis,
        demo=args.demo,
        database_url=args.database_url,
        prometheus_url=args.prometheus_url,
        grafana_url=args.grafana_url,
        grafana_token=args.grafana_token or os.environ.get("GRAFANA_TOKEN"),
    )


def run_validate(args: argparse.Namespace) -> int:
    try:
        options = options_from(args)
        report = asyncio.run(validate(options, Progress(sys.stderr)))
    except UsageError as exc:
        print(f"\ncitadel: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ncitadel: validation interrupted; no report written", file=sys.stderr)
        return 1
    if args.out is None:
        sys.stdout.write(report.to_markdown())
    else:
        try:
            markdown, document = write_reports(report, args.out)
        except OSError as exc:
            print(f"citadel: cannot write the reports to {args.out}: {exc.strerror}", file=sys.stderr)
            return 2
        print(summary(report))
        print(f"\nreports: {markdown}\n         {document}")
    return 0 if report.passed else 1


def summary(report: ValidationReport) -> str:
    """The targets one per line, then the verdict (what the terminal shows when the reports go to files)."""
    lines = []
    caveat = report.demo_caveat()
    if caveat:
        lines += [f"NOTE: {caveat}", ""]
    width = max((len(t.title) for t in report.targets), default=10)
    for target in report.targets:
        figures = f"{target.measured} {target.requirement}".strip()
        lines.append(f"{target.status.upper():4}  {target.title:{width}}  {figures}")
        if target.status != "pass":
            lines.append(f"      {target.reason}")
    counts = report.counts()
    verdict = "PASS" if report.passed else "FAIL"
    lines.append(f"\n{verdict}: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
    return "\n".join(lines)
