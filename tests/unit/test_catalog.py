"""The models file: environment expansion, profiles, and readable errors."""

from pathlib import Path

import pytest

from gateway.catalog import ConfigError, expand_env, load_catalog

REPO_MODELS = Path(__file__).resolve().parents[2] / "config" / "models.yaml"


def test_expand_env_uses_value_then_default() -> None:
    tree = {"a": "${X:-one}", "b": ["${Y:-two}", 3], "c": "http://${HOST:-h}:${PORT:-1}"}
    assert expand_env(tree, {"X": "set", "PORT": "9"}) == {"a": "set", "b": ["two", 3], "c": "http://h:9"}


def test_expand_env_refuses_unset_variable_without_default() -> None:
    with pytest.raises(ConfigError, match=r"\$\{NOPE\}"):
        expand_env("${NOPE}", {})


def test_repository_models_file_has_the_requirements_values() -> None:
    catalog = load_catalog(REPO_MODELS, env={})
    assert set(catalog.models) == {"mixtral", "hermes", "openchat", "phi3", "embed"}
    expected = {
        "mixtral": (11400, 90, 8, 32768, 1500),
        "hermes": (11401, 30, 4, 8192, 1000),
        "openchat": (11402, 25, 4, 8192, 800),
        "phi3": (11403, 8, 2, 4096, 300),
    }
    for name, (port, memory, cpus, max_tokens, target) in expected.items():
        spec = catalog.models[name]
        assert (spec.port, spec.memory_gb, spec.cpus, spec.max_tokens, spec.latency_target_ms) == (
            port,
            memory,
            cpus,
            max_tokens,
            target,
        )
        assert spec.temperature == 0.7
        assert spec.backends == [f"http://localhost:{port}"]
    assert catalog.models["embed"].port == 11404
    assert catalog.models["embed"].kind == "embedding"
    # Without a profile each model has its own server.
    assert sorted(s.port for s in catalog.servers) == [11400, 11401, 11402, 11403, 11404]


def test_backends_come_from_the_environment_as_a_list() -> None:
    catalog = load_catalog(REPO_MODELS, env={"PHI3_BACKENDS": "http://a:1, http://b:2/"})
    assert catalog.models["phi3"].backends == ["http://a:1", "http://b:2"]


def test_local_profile_serves_four_chat_names_from_one_demo_server() -> None:
    catalog = load_catalog(REPO_MODELS, profile="local", env={"CITADEL_DEMO_CHAT_PORT": "12000"})
    chat = [catalog.models[n] for n in ("mixtral", "hermes", "openchat", "phi3")]
    assert {tuple(spec.backends) for spec in chat} == {("http://127.0.0.1:12000",)}
    assert {spec.upstream_name for spec in chat} == {"mixtral"}
    # The demo server's context bounds what a request may ask for.
    assert all(spec.max_tokens == 2048 for spec in chat)
    assert catalog.models["embed"].backends == ["http://127.0.0.1:11404"]
    assert [s.name for s in catalog.servers] == ["demo-chat", "embed"]
    # The server's admission concurrency for every name it serves.
    assert {spec.max_concurrency for spec in catalog.models.values()} == {4}


def test_unknown_profile_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="profile 'nope' is not in"):
        load_catalog(REPO_MODELS, profile="nope", env={})


def test_invalid_entry_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  m:\n    kind: chat\n")
    with pytest.raises(ConfigError, match="invalid"):
        load_catalog(path, env={})


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_catalog(tmp_path / "absent.yaml", env={})
