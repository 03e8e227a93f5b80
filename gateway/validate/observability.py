"""Prometheus (the gateway scraped, its citadel_llm_ metrics, the citadel alert rules loaded) and Grafana (the
Citadel dashboards), when their URLs are given; what is expected of them comes from config/ beside the models file.
The checks of their answers are pure functions, tested without a network."""

from __future__ import annotations

import base64
import contextlib
import glob
import json
from pathlib import Path
from typing import Any

import yaml
from yarl import URL

from .client import Client, Exchange, describe
from .report import Target
from .state import RunState


async def check_prometheus(run: RunState) -> None:
    base = run.options.prometheus_url
    if not base:
        for what in ("gateway_up", "metrics", "rules"):
            run.targets.append(
                Target(
                    id=f"prometheus.{what}",
                    area="prometheus",
                    title=f"Prometheus: {what.replace('_', ' ')}",
                    status="skip",
                    reason="no --prometheus-url given",
                )
            )
        return
    run.progress.phase("Prometheus")
    prometheus = Client(run.session, base, headers={}, timeout_s=min(run.options.timeout_s, 15))
    up = await prometheus.call("GET", "/api/v1/query?query=up")
    run.progress.advance()
    run.targets.append(prometheus_up_target(up))
    names = await prometheus.call(
        "GET", "/api/v1/query?" + _query('count by (__name__) ({__name__=~"citadel_llm_.+"})')
    )
    run.progress.advance()
    run.targets.append(prometheus_metrics_target(names))
    rules = await prometheus.call("GET", "/api/v1/rules")
    run.progress.advance()
    run.targets.append(prometheus_rules_target(rules, expected_rule_groups(run.options.config_path)))
    for target in run.targets[-3:]:
        target.details["prometheus_url"] = str(URL(base).with_user(None))


async def check_grafana(run: RunState) -> None:
    base = run.options.grafana_url
    title = "Grafana: Citadel dashboards present"
    if not base:
        run.targets.append(
            Target(id="grafana.dashboards", area="grafana", title=title, status="skip", reason="no --grafana-url given")
        )
        return
    run.progress.phase("Grafana")
    url = URL(base)
    headers = {"Authorization": f"Bearer {run.options.grafana_token}"} if run.options.grafana_token else {}
    if url.user and not headers:
        pair = f"{url.user}:{url.password or ''}".encode()
        headers = {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}
    grafana = Client(run.session, str(url.with_user(None)), headers=headers, timeout_s=15)
    search = await grafana.call("GET", "/api/search?type=dash-db&limit=5000")
    run.progress.advance()
    run.targets.append(grafana_target(search, expected_dashboards(run.options.config_path)))
    run.targets[-1].details["grafana_url"] = str(url.with_user(None))


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
