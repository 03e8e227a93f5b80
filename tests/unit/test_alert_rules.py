"""Prometheus and Alertmanager configuration: promtool and amtool accept it, and every alert is tested both ways."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from gateway.catalog import load_catalog
from services import prometheus_rules
from tests.support.promql import PROMETHEUS_DIR, ROOT, metric_names, require_binary, rules

ALERTMANAGER_FILE = ROOT / "config" / "alertmanager" / "alertmanager.yml"
# What issue 7 asks to be alerted on, by alert name.
REQUIRED_ALERTS = {
    "CitadelGatewayDown",
    "CitadelModelNoHealthyReplica",
    "CitadelHighErrorRatio",
    "CitadelLatencyP95OverTarget",
    "CitadelTimeToFirstTokenHigh",
    "VllmQueueGrowing",
    "VllmKvCacheNearFull",
    "CitadelAuditRowsSpooling",
    "CitadelRateLimiterFailingOpen",
    "CitadelDependencyDown",
}
# Issue 14 part 7: each model's latency, error ratio and generation speed against its own baseline.
ANOMALY_ALERTS = {"CitadelModelLatencyAnomaly", "CitadelModelErrorRateAnomaly", "CitadelModelThroughputAnomaly"}
ANOMALY_RULES = PROMETHEUS_DIR / "rules" / "anomalies.yml"
OBSERVABILITY_DOC = ROOT / "docs" / "observability.md"


def run(*command: str) -> subprocess.CompletedProcess[str]:
    """Run a tool; the assertion message carries everything it printed."""
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{' '.join(result.args)}\n{result.stdout}\n{result.stderr}"


def test_promtool_accepts_the_config_and_the_rule_files_it_loads() -> None:
    result = run(require_binary("promtool"), "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert_ok(result)
    # The config's `rule_files` glob must load every rule file there is, not none.
    rule_files = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
    assert f"SUCCESS: {len(rule_files)} rule files found" in result.stdout


def test_promtool_accepts_the_rules() -> None:
    rule_files = sorted(str(path) for path in (PROMETHEUS_DIR / "rules").glob("*.yml"))
    assert_ok(run(require_binary("promtool"), "check", "rules", *rule_files))


def test_promtool_rule_unit_tests_pass() -> None:
    tests = sorted(str(path) for path in (PROMETHEUS_DIR / "tests").glob("*.yml"))
    assert tests
    assert_ok(run(require_binary("promtool"), "test", "rules", *tests))


def test_every_required_alert_exists_with_severity_summary_and_description() -> None:
    alerts = [rule for rule in rules() if rule.alert]
    assert {rule.name for rule in alerts} >= REQUIRED_ALERTS
    for rule in alerts:
        assert rule.labels.get("severity") in {"critical", "warning"}, rule.name
        assert rule.annotations.get("summary") and rule.annotations.get("description"), rule.name


def test_every_alert_has_a_test_that_fires_it_and_one_where_it_stays_quiet() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in (PROMETHEUS_DIR / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule.name for rule in rules() if rule.alert}
    assert alerts - fires == set(), "alerts no test fires"
    assert alerts - quiet == set(), "alerts with no healthy test case"


def test_anomaly_alerts_exist_and_point_to_their_runbook() -> None:
    alerts = {rule.name: rule for rule in rules() if rule.alert and rule.file == ANOMALY_RULES.name}
    assert set(alerts) == ANOMALY_ALERTS
    assert "## Anomaly alerts" in OBSERVABILITY_DOC.read_text()
    for rule in alerts.values():
        # A heads-up for the chat channel, not a page: the static alerts page for outright failures.
        assert rule.labels == {"severity": "warning"}, rule.name
        assert rule.annotations["runbook_url"] == "docs/observability.md#anomaly-alerts", rule.name
        assert "{{ $labels.model }}" in rule.annotations["summary"], rule.name


def test_anomaly_rules_keep_only_the_model_label() -> None:
    # Per model and nothing else: no replica, key or other unbounded label reaches the recorded series.
    for rule in rules():
        if rule.file != ANOMALY_RULES.name:
            continue
        for clause, labels in re.findall(r"\b(by|without|on)\s*\(([^()]*)\)", rule.expr):
            allowed = {"by": {"model", "le"}, "without": {"day"}, "on": {"model"}}[clause]
            assert {label.strip() for label in labels.split(",")} <= allowed, f"{rule.name}: {clause} ({labels})"


def test_anomaly_rules_read_series_recorded_earlier_in_their_own_group() -> None:
    # Rules of one group run in order at the same timestamp; separate groups run on their own timers. So a
    # z-score never mixes a signal and a baseline of different evaluations.
    recorded = {rule.name for rule in rules() if not rule.alert}
    for group in yaml.safe_load(ANOMALY_RULES.read_text())["groups"]:
        seen: set[str] = set()
        for rule in (rule for rule in group["rules"] if "record" in rule):
            used = metric_names(rule["expr"]) & recorded
            assert used <= seen, f"{rule['record']} reads {used - seen} before they are recorded in {group['name']}"
            seen.add(rule["record"])


def test_latency_rules_are_generated_from_the_current_models_file() -> None:
    committed = prometheus_rules.RULES_FILE.read_text()
    assert committed == prometheus_rules.current(), "run: python -m services.prometheus_rules"
    # One target per model, in seconds, straight from latency_target_ms.
    catalog = load_catalog(prometheus_rules.MODELS_FILE, env={})
    targets = {
        rule.labels["model"]: float(rule.expr.removeprefix("vector(").removesuffix(")"))
        for rule in rules()
        if rule.name == prometheus_rules.TARGET_SERIES
    }
    assert targets == {name: spec.latency_target_ms / 1000 for name, spec in catalog.models.items()}


def test_generator_follows_a_changed_target(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(
        prometheus_rules.MODELS_FILE.read_text().replace("latency_target_ms: 300", "latency_target_ms: 450")
    )
    text = prometheus_rules.current(models)
    assert text != prometheus_rules.current()
    assert 'expr: vector(0.45)\n        labels:\n          model: "phi3"' in text


def test_prometheus_scrapes_the_gateway_and_one_vllm_server_per_model() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    gateway_targets = [target for group in jobs["citadel-gateway"]["static_configs"] for target in group["targets"]]
    assert gateway_targets == ["gateway:8000"]
    vllm = {target: group["labels"]["model"] for group in jobs["vllm"]["static_configs"] for target in group["targets"]}
    catalog = load_catalog(prometheus_rules.MODELS_FILE, env={})
    assert vllm == {f"vllm-{name}:{spec.port}": name for name, spec in catalog.models.items()}


def test_amtool_accepts_the_alertmanager_config() -> None:
    amtool = require_binary("amtool")
    assert_ok(run(amtool, "check-config", str(ALERTMANAGER_FILE)))


def test_alertmanager_config_with_a_real_webhook_url(tmp_path: Path) -> None:
    # What the compose service does at start (README): the placeholder replaced by CITADEL_ALERT_WEBHOOK_URL.
    text = ALERTMANAGER_FILE.read_text()
    assert "http://alert-webhook.invalid/citadel" in text
    rendered = tmp_path / "alertmanager.yml"
    rendered.write_text(text.replace("http://alert-webhook.invalid/citadel", "https://hooks.example.com/T0/B0/x?y=z"))
    assert_ok(run(require_binary("amtool"), "check-config", str(rendered)))


def test_every_alert_reaches_the_webhook_receiver() -> None:
    amtool = require_binary("amtool")
    for severity in ("critical", "warning"):
        result = run(
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_FILE}",
            "alertname=CitadelGatewayDown",
            f"severity={severity}",
            "model=phi3",
        )
        assert_ok(result)
        assert result.stdout.strip() == "webhook"
