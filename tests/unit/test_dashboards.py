"""Grafana provisioning: the data source is the compose Prometheus, every dashboard panel has a query that parses."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from tests.support.promql import (
    GRAFANA_DIR,
    dashboard_queries,
    dashboards,
    grafana_to_promql,
    metric_names,
    panels,
    require_binary,
    rules,
    used_metric_names,
)

# The metric contract between the gateway and config/ (base names; histograms also as _bucket/_sum/_count).
GATEWAY_METRICS = {
    "citadel_llm_requests_total",
    "citadel_llm_request_duration_seconds",
    "citadel_llm_time_to_first_token_seconds",
    "citadel_llm_prompt_tokens_total",
    "citadel_llm_completion_tokens_total",
    "citadel_llm_tokens_per_second",
    "citadel_llm_cache_requests_total",
    "citadel_llm_rate_limited_total",
    "citadel_llm_upstream_errors_total",
    "citadel_llm_upstream_retries_total",
    "citadel_llm_replica_up",
    "citadel_llm_breaker_state",
    "citadel_llm_dependency_up",
    "citadel_llm_audit_queue_depth",
    "citadel_llm_audit_spooled_rows",
    "citadel_llm_redis_failures_total",
    "citadel_llm_postgres_failures_total",
    "citadel_llm_qdrant_failures_total",
    "citadel_llm_cost_total",
    "citadel_llm_feedback_total",
    # The admission queue and model aliases (gateway/observability/admission_metrics.py).
    "citadel_llm_queue_depth",
    "citadel_llm_queue_wait_seconds",
    "citadel_llm_admission_total",
    "citadel_llm_admission_in_flight",
    "citadel_llm_admission_capacity",
    "citadel_llm_alias_requests_total",
    "citadel_llm_alias_fallbacks_total",
    # The Batch API (gateway/observability/batch_metrics.py).
    "citadel_llm_batches",
    "citadel_llm_batch_lines_pending",
    "citadel_llm_batch_lines_total",
    "citadel_llm_batch_runner_leader",
}
# The outcomes of citadel_llm_admission_total that shed a request (SHED_OUTCOMES in admission_metrics.py).
SHED_OUTCOMES = ("queue_full", "key_share", "timeout")
# Issue 16 part 5: what both dashboards show of the admission queue and the aliases.
CAPACITY_METRICS = {
    "citadel_llm_queue_depth",
    "citadel_llm_queue_wait_seconds_bucket",
    "citadel_llm_admission_total",
    "citadel_llm_admission_in_flight",
    "citadel_llm_admission_capacity",
    "citadel_llm_alias_requests_total",
    "citadel_llm_alias_fallbacks_total",
}
# Issue 17 part 5: what the overview shows of batches (the wait is the admission queue's, batch class).
BATCH_METRICS = {
    "citadel_llm_batches",
    "citadel_llm_batch_lines_pending",
    "citadel_llm_batch_lines_total",
    "citadel_llm_batch_runner_leader",
    "citadel_llm_queue_wait_seconds_bucket",
}
VLLM_METRICS = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:time_to_first_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_total",
}
DATASOURCE_UID = "prometheus"


def base_name(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def test_datasource_is_the_compose_prometheus() -> None:
    config = yaml.safe_load((GRAFANA_DIR / "datasources" / "prometheus.yml").read_text())
    [source] = config["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["uid"] == DATASOURCE_UID
    assert source["isDefault"] is True


def test_dashboard_provider_loads_the_folder_the_dashboards_are_in() -> None:
    config = yaml.safe_load((GRAFANA_DIR / "dashboards" / "provider.yml").read_text())
    [provider] = config["providers"]
    assert provider["type"] == "file"
    # config/grafana is mounted at /etc/grafana/provisioning.
    assert provider["options"]["path"] == "/etc/grafana/provisioning/dashboards"
    assert {"overview.json", "model.json"} <= set(dashboards())


def test_dashboards_are_valid_json_with_unique_uids() -> None:
    uids = []
    for path in sorted((GRAFANA_DIR / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        assert board["title"] and board["uid"], path.name
        uids.append(board["uid"])
    assert len(uids) == len(set(uids))


def test_every_panel_has_a_query_on_the_provisioned_datasource() -> None:
    for file, board in dashboards().items():
        found = panels(board)
        assert found, file
        for panel in found:
            where = f"{file}: {panel.get('title')}"
            assert panel.get("datasource", {}).get("uid") == DATASOURCE_UID, where
            targets = panel.get("targets")
            assert targets, f"{where} has no query"
            for target in targets:
                assert str(target.get("expr", "")).strip(), f"{where} has an empty query"
                assert target.get("datasource", {}).get("uid", DATASOURCE_UID) == DATASOURCE_UID, where


def test_panel_ids_are_unique_within_a_dashboard() -> None:
    for file, board in dashboards().items():
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), file


def test_the_model_variable_lists_every_configured_model() -> None:
    for file, board in dashboards().items():
        variables = {variable["name"]: variable for variable in board["templating"]["list"]}
        assert "model" in variables, file
        assert metric_names(variables["model"]["query"]["query"]) == {"citadel_llm:latency_target_seconds"}
    per_model = dashboards()["model.json"]
    assert per_model["templating"]["list"][0]["multi"] is False
    # The per-model page shows vLLM's own figures: running and waiting requests, KV cache usage.
    used = set().union(*(metric_names(expr) for _, expr in dashboard_queries()))
    assert {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"} <= used


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses each query as a recording rule: a typo in a dashboard fails here, not in Grafana.
    queries = [expr for _, expr in dashboard_queries() if not expr.lstrip().startswith("label_values(")]
    rules = [{"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)} for i, expr in enumerate(queries)]
    path = tmp_path / "dashboards.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [require_binary("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_name_used_is_in_the_contract() -> None:
    # A spelling check without network; tests/e2e/test_metric_names.py checks the live /metrics.
    unknown = {
        name: sorted(where)
        for name, where in used_metric_names().items()
        if base_name(name) not in GATEWAY_METRICS | VLLM_METRICS and name not in GATEWAY_METRICS | VLLM_METRICS
    }
    assert unknown == {}


def shown_alerts(expr: str) -> set[str]:
    """The alert names a query's ALERTS{alertname="A"} or {alertname=~"A|B"} selects."""
    return {name for names in re.findall(r'alertname=~?"([^"]*)"', expr) for name in names.split("|")}


def test_every_alert_name_a_dashboard_shows_is_a_rule() -> None:
    # A renamed alert would leave an empty panel.
    alerts = {rule.name for rule in rules() if rule.alert}
    for where, expr in dashboard_queries():
        assert shown_alerts(expr) <= alerts, where


def test_dashboards_show_the_anomaly_z_scores_and_alerts() -> None:
    # Issue 14 part 7: every z-score and the state of every anomaly alert, on both dashboards.
    zscores = {rule.name for rule in rules() if not rule.alert and rule.name.endswith(":zscore")}
    anomaly_alerts = {rule.name for rule in rules() if rule.alert and rule.file == "anomalies.yml"}
    assert len(zscores) == len(anomaly_alerts) == 3
    for file in dashboards():
        queries = [expr for where, expr in dashboard_queries() if where.startswith(f"{file}: ")]
        assert zscores <= set().union(*(metric_names(expr) for expr in queries)), file
        assert anomaly_alerts <= set().union(*(shown_alerts(expr) for expr in queries)), file


def test_dashboards_show_the_admission_queue_and_the_aliases() -> None:
    for file in dashboards():
        queries = [expr for where, expr in dashboard_queries() if where.startswith(f"{file}: ")]
        assert set().union(*(metric_names(expr) for expr in queries)) >= CAPACITY_METRICS, file
        # The wait is read per class, as a quantile of the histogram; shed reasons are the metric's outcomes.
        waits = [expr for expr in queries if "citadel_llm_queue_wait_seconds_bucket" in expr]
        assert waits and all("histogram_quantile(" in expr and "priority" in expr for expr in waits), file
    overview = [expr for where, expr in dashboard_queries() if where.startswith("overview.json: Shed")]
    assert overview and all(outcome in overview[0] for outcome in SHED_OUTCOMES)


def test_the_overview_has_a_batches_row() -> None:
    board = dashboards()["overview.json"]
    [row] = [panel for panel in board["panels"] if panel["type"] == "row" and panel["title"].startswith("Batches")]
    inside = [panel for panel in board["panels"] if panel["gridPos"]["y"] == row["gridPos"]["y"] + 1]
    queries = [target["expr"] for panel in inside for target in panel["targets"]]
    assert set().union(*(metric_names(expr) for expr in queries)) == BATCH_METRICS
    # Lines per second is a rate of the counter; the gauges are one leader's values, read with max, never summed.
    assert any("rate(citadel_llm_batch_lines_total[" in expr for expr in queries)
    assert all("max" in expr for expr in queries if "citadel_llm_batches" in metric_names(expr))
    assert any('priority="batch"' in expr for expr in queries if "citadel_llm_queue_wait_seconds_bucket" in expr)
