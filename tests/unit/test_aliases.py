"""Model aliases: the catalogue's `aliases:` and its checks, the choice of a target and every reason to skip one,
the error when none can serve, allow-lists naming aliases, and aliases in /v1/models."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.aliases import (
    AliasChoice,
    Skip,
    alias_allowed,
    allowed_targets,
    choose_target,
    fits_context,
    known_model_names,
    target_allowed,
)
from gateway.api.openai import get_model, list_models
from gateway.app import create_app
from gateway.auth import Principal, Role
from gateway.catalog import AliasSpec, Catalog, ConfigError, load_catalog
from gateway.errors import APIError, InvalidRequest, ModelSaturated, PermissionDenied, UpstreamUnavailable
from tests.conftest import make_settings
from tests.support.catalogs import ADMIN_KEY, chat_entry

REPO_MODELS = Path(__file__).resolve().parents[2] / "config" / "models.yaml"
SECRET_URL = "http://10.9.8.7:4242"


def entry(max_len: int = 4096, **fields: Any) -> dict[str, Any]:
    return {**chat_entry(SECRET_URL, max_tokens=max_len), **fields}


def embed_entry(dimensions: int = 384) -> dict[str, Any]:
    return entry(256, kind="embedding", dimensions=dimensions)


def write(path: Path, models: dict[str, Any], aliases: Any = None, **extra: Any) -> Path:
    tree: dict[str, Any] = {"models": models, **extra}
    if aliases is not None:
        tree["aliases"] = aliases
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


MODELS = {"big": entry(8192), "mid": entry(4096), "small": entry(1024), "emb": embed_entry()}


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return load_catalog(write(tmp_path / "models.yaml", MODELS, {"chain": ["big", "mid", "small"]}), env={})


def alias_of(catalog: Catalog) -> AliasSpec:
    alias = catalog.alias("chain")
    assert alias is not None
    return alias


def choose(
    catalog: Catalog,
    *,
    denied: Collection[str] = (),
    down: Collection[str] = (),
    busy: Collection[str] = (),
    too_small: Collection[str] = (),
) -> AliasChoice:
    return choose_target(
        alias_of(catalog),
        catalog,
        allowed=lambda name: name not in denied,
        available=lambda name: name not in down,
        saturated=lambda name: name in busy,
        fits=lambda spec: spec.name not in too_small,
        retry_after_s=3,
    )


# ---- the catalogue ----------------------------------------------------------------------------------------------


def test_the_repository_file_defines_default_and_fast_under_every_profile() -> None:
    for profile in (None, "local"):
        catalog = load_catalog(REPO_MODELS, profile=profile, env={})
        assert catalog.aliases["default"] == AliasSpec(name="default", targets=("mixtral", "hermes"), kind="chat")
        assert catalog.aliases["fast"] == AliasSpec(name="fast", targets=("phi3", "openchat"), kind="chat")
        assert all(name in catalog.models for alias in catalog.aliases.values() for name in alias.targets)


def test_a_profile_keeps_the_aliases_and_their_targets_point_at_its_servers(tmp_path: Path) -> None:
    servers = {
        "s": {"weights": "w", "port": 9, "serves": ["big", "mid", "small"], "max_model_len": 512},
        "e": {"weights": "w", "port": 8, "serves": ["emb"], "max_model_len": 256},
    }
    profiles = {"one": {"servers": servers}}
    path = write(tmp_path / "models.yaml", MODELS, {"chain": ["big", "small"]}, profiles=profiles)
    catalog = load_catalog(path, profile="one", env={})
    assert catalog.aliases["chain"].targets == ("big", "small")
    assert {catalog.models[name].backends[0] for name in catalog.aliases["chain"].targets} == {"http://127.0.0.1:9"}


def test_no_aliases_is_an_empty_mapping(tmp_path: Path) -> None:
    assert load_catalog(write(tmp_path / "models.yaml", MODELS), env={}).aliases == {}
    assert Catalog(models={}, servers=[]).aliases == {}


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        (["big"], "'aliases' must be a mapping"),
        ({"big": ["mid"]}, "alias 'big' is also a model name"),
        ({"bad/name": ["mid"]}, "alias name 'bad/name' is not valid"),
        ({"-x": ["mid"]}, "alias name '-x' is not valid"),
        ({"x" * 65: ["mid"]}, "is not valid"),
        ({"a": []}, "alias 'a' has no targets"),
        ({"a": "mid"}, "alias 'a' must be a list of model names"),
        ({"a": None}, "alias 'a' must be a list of model names"),
        ({"a": ["mid", "nope"]}, "alias 'a' names unknown model 'nope'"),
        ({"a": ["mid"], "b": ["a"]}, "alias 'b' names unknown model 'a' \\(targets are models, not aliases\\)"),
        ({"a": ["mid", "small", "mid"]}, "alias 'a' names model 'mid' twice"),
        ({"a": ["mid", "emb"]}, "alias 'a' mixes chat and embedding models \\(mid: chat, emb: embedding\\)"),
    ],
)
def test_invalid_aliases_are_clear_config_errors(tmp_path: Path, aliases: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_catalog(write(tmp_path / "models.yaml", MODELS, aliases), env={})


def test_an_embedding_alias_needs_one_dimension(tmp_path: Path) -> None:
    models = {"e1": embed_entry(384), "e2": embed_entry(384), "e3": embed_entry(768)}
    catalog = load_catalog(write(tmp_path / "models.yaml", models, {"vec": ["e1", "e2"]}), env={})
    assert catalog.aliases["vec"].kind == "embedding"
    with pytest.raises(ConfigError, match="different dimensions \\(e1: 384, e3: 768\\)"):
        load_catalog(write(tmp_path / "models.yaml", models, {"vec": ["e1", "e3"]}), env={})


def test_max_concurrency_is_optional_and_at_least_one(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path / "models.yaml", {"m": entry(max_concurrency=2), "n": entry()}), env={})
    assert (catalog.models["m"].max_concurrency, catalog.models["n"].max_concurrency) == (2, None)
    with pytest.raises(ConfigError, match="max_concurrency"):
        load_catalog(write(tmp_path / "models.yaml", {"m": entry(max_concurrency=0)}), env={})


# ---- choosing a target ------------------------------------------------------------------------------------------


def test_the_first_target_serves_when_it_can(catalog: Catalog) -> None:
    choice = choose(catalog)
    assert (choice.alias, choice.target.name, choice.skipped, choice.fell_back) == ("chain", "big", (), False)


@pytest.mark.parametrize(
    ("why", "reason"),
    [("denied", Skip.NOT_ALLOWED), ("down", Skip.UNAVAILABLE), ("busy", Skip.SATURATED), ("too_small", Skip.CONTEXT)],
)
def test_each_reason_falls_back_to_the_next_target(catalog: Catalog, why: str, reason: Skip) -> None:
    choice = choose(catalog, **{why: {"big"}})
    assert choice.target.name == "mid"
    assert choice.skipped == (("big", reason),) and choice.fell_back


def test_falls_back_down_the_whole_list_in_order(catalog: Catalog) -> None:
    choice = choose(catalog, down={"big"}, busy={"mid"})
    assert choice.target.name == "small"
    assert choice.skipped == (("big", Skip.UNAVAILABLE), ("mid", Skip.SATURATED))


@pytest.mark.parametrize(
    ("failing", "reason"),
    [
        ({"denied", "down", "busy", "too_small"}, Skip.NOT_ALLOWED),
        ({"down", "busy", "too_small"}, Skip.UNAVAILABLE),
        ({"busy", "too_small"}, Skip.SATURATED),
        ({"too_small"}, Skip.CONTEXT),
    ],
)
def test_the_first_failing_check_is_the_reason(catalog: Catalog, failing: set[str], reason: Skip) -> None:
    choice = choose(catalog, **{why: {"big"} for why in failing})
    assert choice.skipped == (("big", reason),)


def test_checks_stop_at_the_first_failure(catalog: Catalog) -> None:
    asked: list[str] = []

    def record(check: str, result: bool) -> Callable[[Any], bool]:
        def answer(_: Any) -> bool:
            asked.append(check)
            return result

        return answer

    alias = AliasSpec(name="chain", targets=("big",), kind="chat")
    with pytest.raises(UpstreamUnavailable):
        choose_target(
            alias,
            catalog,
            allowed=record("allowed", True),
            available=record("available", False),
            saturated=record("saturated", False),
            fits=record("fits", True),
        )
    assert asked == ["allowed", "available"]


def raised(catalog: Catalog, **failing: set[str]) -> APIError:
    with pytest.raises(APIError) as caught:
        choose(catalog, **failing)
    error = caught.value
    assert SECRET_URL not in error.message and "10.9.8.7" not in error.message
    assert "'chain'" in error.message
    return error


def test_none_allowed_is_403_model_not_allowed(catalog: Catalog) -> None:
    error = raised(catalog, denied={"big", "mid", "small"})
    assert isinstance(error, PermissionDenied) and error.status_code == 403
    assert (error.code, error.param) == ("model_not_allowed", "model")
    assert not any(name in error.message for name in ("big", "mid", "small"))


def test_none_available_is_503_model_unavailable(catalog: Catalog) -> None:
    error = raised(catalog, denied={"big"}, down={"mid"}, too_small={"small"})
    assert isinstance(error, UpstreamUnavailable) and not isinstance(error, ModelSaturated)
    assert (error.status_code, error.code, error.error_type) == (503, "model_unavailable", "service_unavailable")
    # The reason per target the key may use; the others only counted, not named.
    assert "mid: no replica available" in error.message and "small: context too small" in error.message
    assert "big" not in error.message and "1 more this key may not use" in error.message


def test_a_saturated_target_makes_it_503_model_saturated_with_retry_after(catalog: Catalog) -> None:
    error = raised(catalog, down={"big"}, busy={"mid"}, too_small={"small"})
    assert isinstance(error, ModelSaturated)
    assert (error.status_code, error.code, error.headers["Retry-After"]) == (503, "model_saturated", "3")
    assert "big: no replica available" in error.message and "mid: saturated" in error.message


def test_all_too_small_is_400_context_length_exceeded(catalog: Catalog) -> None:
    error = raised(catalog, denied={"big"}, too_small={"mid", "small"})
    assert isinstance(error, InvalidRequest) and error.status_code == 400
    assert error.code == "context_length_exceeded"
    assert "mid: context too small" in error.message and "big" not in error.message


def test_a_target_missing_from_the_catalogue_is_skipped_not_a_crash(catalog: Catalog) -> None:
    stale = AliasSpec(name="chain", targets=("gone", "mid"), kind="chat")
    choice = choose_target(
        stale, catalog, allowed=lambda _: True, available=lambda _: True, saturated=lambda _: False, fits=lambda _: True
    )
    assert choice.target.name == "mid" and choice.skipped == (("gone", Skip.UNAVAILABLE),)


def test_fits_context_estimates_four_characters_a_token(catalog: Catalog) -> None:
    small = catalog.models["small"]  # max_model_len 1024
    assert fits_context(small, prompt_chars=4 * 1000, max_tokens=24)
    assert not fits_context(small, prompt_chars=4 * 1000, max_tokens=25)
    assert not fits_context(small, prompt_chars=4 * 1000 + 1, max_tokens=24)  # a started token counts
    assert fits_context(small, prompt_chars=4 * 1023, max_tokens=None)  # unset: one token of answer
    assert not fits_context(small, prompt_chars=4 * 1024, max_tokens=None)
    assert fits_context(small, prompt_chars=0, max_tokens=1024)


# ---- allow-lists --------------------------------------------------------------------------------------------------


def test_allow_lists_may_name_an_alias_or_its_targets(catalog: Catalog) -> None:
    alias = alias_of(catalog)
    assert alias_allowed(None, alias) and alias_allowed(frozenset({"chain"}), alias)
    assert alias_allowed(frozenset({"small"}), alias) and not alias_allowed(frozenset({"emb"}), alias)
    assert target_allowed(None, alias, "big") and target_allowed(frozenset({"chain"}), alias, "big")
    assert target_allowed(frozenset({"mid"}), alias, "mid") and not target_allowed(frozenset({"mid"}), alias, "big")
    assert allowed_targets(frozenset({"small", "big"}), alias) == ("big", "small")  # the alias's order
    assert allowed_targets(frozenset({"chain"}), alias) == ("big", "mid", "small")


def test_known_model_names_are_models_and_aliases(catalog: Catalog) -> None:
    assert known_model_names(catalog) == frozenset({"big", "mid", "small", "emb", "chain"})


# ---- /v1/models ---------------------------------------------------------------------------------------------------


def principal(allowed: set[str] | None) -> Principal:
    return Principal(
        key_id=uuid.uuid4(), name="k", role=Role.USER, allowed_models=None if allowed is None else frozenset(allowed)
    )


async def test_v1_models_lists_the_aliases_a_key_may_call_with_their_targets(catalog: Catalog) -> None:
    every = await list_models(catalog, principal(None))
    cards = {card["id"]: card for card in every["data"]}  # type: ignore[attr-defined]
    assert list(cards) == ["big", "mid", "small", "emb", "chain"]
    chain = cards["chain"]
    assert chain["alias_of"] == ["big", "mid", "small"] and chain["kind"] == "chat" and chain["object"] == "model"
    assert (chain["max_model_len"], chain["max_tokens"]) == (8192, 8192)  # the largest target's
    assert "alias_of" not in cards["big"]

    # A key allowed two of the targets sees the alias through those two only, sized by them.
    some = await list_models(catalog, principal({"mid", "small"}))
    shown = {card["id"]: card for card in some["data"]}  # type: ignore[attr-defined]
    assert list(shown) == ["mid", "small", "chain"]
    assert shown["chain"]["alias_of"] == ["mid", "small"] and shown["chain"]["max_model_len"] == 4096

    # Naming the alias grants the alias (and its targets through it), not the targets by their own names.
    through = await list_models(catalog, principal({"chain"}))
    assert [card["id"] for card in through["data"]] == ["chain"]  # type: ignore[attr-defined]
    none = await list_models(catalog, principal({"emb"}))
    assert [card["id"] for card in none["data"]] == ["emb"]  # type: ignore[attr-defined]


async def test_v1_models_alias_card_or_403(catalog: Catalog) -> None:
    card = await get_model("chain", catalog, principal({"small"}))
    assert card["id"] == "chain" and card["alias_of"] == ["small"]
    with pytest.raises(PermissionDenied) as caught:
        await get_model("chain", catalog, principal({"emb"}))
    assert caught.value.code == "model_not_allowed"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    models = {"e1": embed_entry(), "e2": embed_entry(), "chat-a": entry(2048), "chat-b": entry(4096)}
    path = write(tmp_path / "models.yaml", models, {"smart": ["chat-b", "chat-a"], "vectors": ["e1", "e2"]})
    app = create_app(make_settings(path))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://x") as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        yield client


async def test_the_gateway_serves_alias_cards_in_its_schema(client: httpx.AsyncClient) -> None:
    listing = (await client.get("/v1/models")).json()
    ids = [card["id"] for card in listing["data"]]
    assert ids == ["e1", "e2", "chat-a", "chat-b", "smart", "vectors"]
    vectors = (await client.get("/v1/models/vectors")).json()
    assert vectors["alias_of"] == ["e1", "e2"] and vectors["dimensions"] == 384 and vectors["kind"] == "embedding"
    smart = (await client.get("/v1/models/smart")).json()
    assert smart["display_name"] == "Alias of Test model, Test model" and smart["max_tokens"] == 4096
    assert (await client.get("/v1/models/nope")).status_code == 404
    schema = (await client.get("/openapi.json")).json()
    assert "alias_of" in schema["components"]["schemas"]["ModelCard"]["properties"]
