"""Metric names used by the alert rules and Grafana dashboards in config/, and names in a /metrics scrape.

A small PromQL reader, enough for our own expressions: strings, label matchers, ranges and grouping
clauses are removed first; what remains that is not a function, keyword or number is a metric name.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "config" / "prometheus"
GRAFANA_DIR = ROOT / "config" / "grafana"

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+")
_IDENTIFIER = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"inf", "nan", "atan2"}
)
# Grafana's own variables become harmless values before parsing.
_GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.+?)\s*,\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$")
# Series Prometheus makes itself, not scraped from a target.
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS", "ALERTS_FOR_STATE"})


def grafana_to_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, so Prometheus' own tools can parse it."""
    for variable, value in _GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?([a-zA-Z_]\w*)\}?", r"\1", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (`label_values(metric, label)` of Grafana included)."""
    match = _LABEL_VALUES.match(expr)
    if match:
        expr = match.group(1)
    text = _STRING.sub('""', grafana_to_promql(expr))
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name not in _KEYWORDS}


@dataclass(frozen=True)
class Rule:
    file: str
    group: str
    name: str  # the alert's name, or the recorded series
    expr: str
    alert: bool
    labels: dict[str, str]
    annotations: dict[str, str]


def rules() -> list[Rule]:
    """Every rule of every file in config/prometheus/rules/."""
    found = []
    for path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                found.append(
                    Rule(
                        file=path.name,
                        group=group["name"],
                        name=rule.get("alert") or rule["record"],
                        expr=rule["expr"],
                        alert="alert" in rule,
                        labels=rule.get("labels") or {},
                        annotations=rule.get("annotations") or {},
                    )
                )
    return found


def dashboards() -> dict[str, dict[str, Any]]:
    """Every provisioned dashboard, by file name."""
    return {path.name: json.loads(path.read_text()) for path in sorted((GRAFANA_DIR / "dashboards").glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel but rows, including panels nested in collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expression) for every panel query and every query variable of every dashboard."""
    found = []
    for file, board in dashboards().items():
        for panel in panels(board):
            for target in panel.get("targets", []):
                found.append((f"{file}: {panel.get('title')}", str(target.get("expr", ""))))
        for variable in board.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                query = variable.get("query")
                text = query.get("query", "") if isinstance(query, dict) else str(query)
                found.append((f"{file}: variable {variable.get('name')}", text))
    return found


def used_metric_names() -> dict[str, set[str]]:
    """Metric name -> where it is used, over every alert rule and dashboard query; recorded series left out."""
    recorded = {rule.name for rule in rules() if not rule.alert}
    used: dict[str, set[str]] = {}
    queries = [(f"{rule.file}: {rule.name}", rule.expr) for rule in rules()] + dashboard_queries()
    for where, expr in queries:
        for name in metric_names(expr) - recorded - SYNTHETIC:
            used.setdefault(name, set()).add(where)
    return used


def scraped_names(exposition: str) -> set[str]:
    """Sample names in a Prometheus text exposition (histograms as their _bucket/_sum/_count series)."""
    names = set()
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def require_binary(name: str) -> str:
    """The path of a Debian monitoring tool, or a failure that says how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: run `make system-deps` (Debian packages prometheus, prometheus-alertmanager)"
        )
    return path
