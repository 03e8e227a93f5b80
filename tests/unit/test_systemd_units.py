"""The systemd unit templates (hosts without Docker): they run files of this repository as the service user, parse
for systemd where it is installed, and their README gives each model the values of config/models.yaml."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.catalog import ModelSpec, load_catalog
from tests.support import compose
from tests.support.compose import ROOT


@pytest.fixture(scope="module")
def models() -> dict[str, ModelSpec]:
    return dict(load_catalog(ROOT / "config" / "models.yaml", profile=None, env={}).models)


SYSTEMD = ROOT / "deploy" / "systemd"


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


@pytest.mark.parametrize("name", ["citadel-gateway.service", "citadel-vllm@.service"])
def test_systemd_units_run_the_repository_code_as_a_service_user(name: str) -> None:
    unit = _unit(SYSTEMD / name)
    service = unit["Service"]
    assert service["User"] == ["citadel"]
    assert service["EnvironmentFile"][0].startswith("/etc/citadel/")
    for command in service.get("ExecStartPre", []) + service["ExecStart"]:
        # /opt/citadel is the repository: every file a unit runs must exist in it.
        for word in command.split():
            if word.startswith("/opt/citadel/") and "/.venv" not in word:
                assert (ROOT / word.removeprefix("/opt/citadel/")).exists(), word
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    if shutil.which("systemd-analyze"):
        result = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(SYSTEMD / name)], capture_output=True, text=True, check=False
        )
        assert "Unknown key" not in result.stderr and "Invalid" not in result.stderr, result.stderr


def test_systemd_readme_gives_each_model_the_values_of_the_models_file(models: dict[str, ModelSpec]) -> None:
    rows = {}
    for line in (SYSTEMD / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells and cells[0] in models:
            rows[cells[0]] = cells
    assert set(rows) == set(models)
    for name, spec in models.items():
        _, kind, port, cpus, memory, max_len, kv, parser, template = rows[name]
        assert (kind, int(port), int(max_len)) == (spec.kind, spec.port, spec.max_model_len), name
        assert (parser or None, template or None) == (spec.tool_call_parser, spec.chat_template), name
        assert float(cpus.split()[0]) == spec.cpus and cpus.endswith(f"({int(spec.cpus * 100)}%)"), name
        assert compose.memory_bytes(memory) == int(spec.memory_gb * 2**30), name
        assert float(kv) == spec.kv_cache_gb, name
    example = dict(
        line.split("=", 1) for line in (SYSTEMD / "vllm-instance.env.example").read_text().splitlines() if "=" in line
    )
    mixtral = models["mixtral"]
    assert int(example["CITADEL_VLLM_PORT"]) == mixtral.port
    assert float(example["CITADEL_VLLM_KV_CACHE_GB"]) == mixtral.kv_cache_gb
    assert int(example["CITADEL_VLLM_MAX_MODEL_LEN"]) == mixtral.max_model_len
    assert (example["CITADEL_VLLM_TOOL_CALL_PARSER"] or None) == mixtral.tool_call_parser
