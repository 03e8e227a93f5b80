"""Live configuration without a network: what a new catalogue changes, what the pool does with its replicas (kept
ones keep their state, new ones are fresh, removed ones drain before they close), and the pieces a reload
updates. The whole path, with real processes: tests/integration/test_reload.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.catalog import Catalog, ModelSpec
from gateway.errors import ModelNotFound
from gateway.observability.requests import RequestObserver
from gateway.reload import CatalogDiff, ReloadListener, diff_catalogs
from gateway.upstream.breaker import BreakerState
from gateway.upstream.pool import UpstreamPool, plan_replicas, replica_layout
from tests.conftest import make_settings
from tests.support.catalogs import chat_entry

A, B, C = "http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"


def catalog(**models: dict[str, Any]) -> Catalog:
    return Catalog(models={name: ModelSpec(name=name, **fields) for name, fields in models.items()}, servers=[])


def entry(*backends: str, **fields: Any) -> dict[str, Any]:
    return {**chat_entry(",".join(backends)), **fields}


def test_an_identical_catalogue_changes_nothing() -> None:
    models = {"m": entry(A, B), "n": entry(C)}
    diff = diff_catalogs(catalog(**models), catalog(**models))
    assert diff.empty and diff == CatalogDiff()
    assert diff.describe() == "no changes"


def test_the_diff_names_models_fields_and_replicas() -> None:
    old = catalog(keep=entry(A), change=entry(A, B, max_tokens=64), drop=entry(C))
    new = catalog(
        keep=entry(A),
        change=entry(A, max_tokens=128, temperature=0.1, timeouts={"total_s": 5}),
        add=entry("http://10.0.0.9:9000"),
    )
    diff = diff_catalogs(old, new)
    assert diff.models_added == ("add",)
    assert diff.models_removed == ("drop",)
    assert diff.models_changed == {"change": ("max_tokens", "temperature", "backends", "timeouts")}
    # A replica is its URL, across models: B and C are gone from every model, A stays (keep, change).
    assert diff.replicas_added == ("http://10.0.0.9:9000",)
    assert diff.replicas_removed == (B, C)
    assert diff.describe() == (
        "models added: add; models removed: drop; "
        "models changed: change (max_tokens, temperature, backends, timeouts); "
        "replicas added: 10.0.0.9:9000; replicas removed: 10.0.0.2:8000, 10.0.0.3:8000"
    )


def test_prices_and_server_fields_are_changes_too() -> None:
    old = catalog(m=entry(A))
    new = catalog(m=entry(A, price_per_1k_prompt_tokens=0.5, cpus=4, weights="/models/other"))
    assert diff_catalogs(old, new).models_changed == {"m": ("weights", "cpus", "price_per_1k_prompt_tokens")}


def test_the_replica_plan_keeps_shared_replicas_and_lists_their_models() -> None:
    new = catalog(m=entry(A, B), n=entry(B, C))
    assert replica_layout(new) == {A: ["m"], B: ["m", "n"], C: ["n"]}
    plan = plan_replicas([A, "http://old:1"], new)
    assert plan.added == (B, C)
    assert plan.removed == ("http://old:1",)
    assert plan.kept == (A,)


@pytest.fixture
async def pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    settings = make_settings(tmp_path / "models.yaml", breaker_failure_threshold=1, upstream_total_timeout_s=60)
    pool = UpstreamPool(catalog(m=entry(A, B), gone=entry(C)), settings)
    probed: list[str] = []

    async def probe(replica: Any) -> None:  # no network: every replica answers
        probed.append(replica.url)

    monkeypatch.setattr(pool.prober, "probe", probe)
    pool.probed = probed
    await pool.start()
    try:
        yield pool
    finally:
        await pool.close()


async def test_a_reload_keeps_the_state_of_unchanged_replicas_and_adds_fresh_ones(pool: Any) -> None:
    kept = pool._replicas[A]
    kept.breaker.record_failure()  # threshold 1: open
    kept.load.waiting = 7
    session = kept.session
    new = catalog(m=entry(A, "http://10.0.0.4:8000"))
    prepared = await pool.prepare(new)
    assert pool.probed == ["http://10.0.0.4:8000"], "only the new replica is probed, before it is used"
    assert [r.url for r in pool._by_model["m"]] == [A, B], "nothing changes before apply()"
    pool.apply(prepared)
    assert pool._by_model.keys() == {"m"}
    [same, fresh] = pool._by_model["m"]
    assert same is kept and same.session is session and same.load.waiting == 7
    assert same.breaker.state is BreakerState.OPEN, "a kept replica keeps its breaker"
    assert fresh.url == "http://10.0.0.4:8000" and fresh.breaker.state is BreakerState.CLOSED
    assert fresh.session is not None and fresh.models == ["m"]
    assert {r.url for r in pool.prober._replicas} == {A, "http://10.0.0.4:8000"}


async def test_a_removed_replica_takes_no_new_request_and_closes_once_its_requests_finish(pool: Any) -> None:
    removed = pool._replicas[B]
    removed.outstanding = 1  # a stream in flight
    pool.apply(await pool.prepare(catalog(m=entry(A), gone=entry(C))))
    assert removed not in pool._by_model["m"], "out of rotation at once"
    assert pool.draining == [removed] and removed.models == []
    await asyncio.sleep(0.3)
    assert removed.session is not None and not removed.session.closed, "kept open while its request runs"
    removed.outstanding = 0  # the stream ends
    for _ in range(30):
        if removed.session.closed:
            break
        await asyncio.sleep(0.1)
    assert removed.session.closed and pool.draining == []


async def test_a_request_for_a_model_removed_meanwhile_is_404_and_old_specs_keep_their_timeouts(pool: Any) -> None:
    old = catalog(m=entry(A, B), gone=entry(C))
    new = catalog(m=entry(A, B, timeouts={"first_byte_s": 7}))
    pool.apply(await pool.prepare(new))
    with pytest.raises(ModelNotFound):
        await pool.post(old.models["gone"], "/v1/chat/completions", b"{}", request_id="r")
    assert pool._timeouts_for(new.models["m"]).first_byte_s == 7
    assert pool._timeouts_for(old.models["m"]).first_byte_s == 120, "a request from before keeps its spec's"


def test_the_observer_takes_new_prices_and_keeps_the_labels_of_removed_models() -> None:
    observer = RequestObserver(catalog(m=entry(A, price_per_1k_prompt_tokens=1.0), old=entry(A)))
    observer.use_catalog(catalog(m=entry(A, price_per_1k_prompt_tokens=2.0), new=entry(A)))
    assert observer.prices["m"] == (0.002, 0.0)
    assert observer.model_label("new") == "new"
    assert observer.model_label("old") == "old", "its requests in flight still end under its name"
    assert observer.model_label("anything") == "other"


def test_the_listener_reloads_on_other_workers_messages_only() -> None:
    asked: list[str] = []
    listener = ReloadListener(redis=None, worker_id="me", reload=asked.append)  # type: ignore[arg-type]
    listener.handle(orjson.dumps({"origin": "me"}))
    assert asked == []
    listener.handle(orjson.dumps({"origin": "another"}))
    assert asked == ["redis"]
    for junk in (b"not json", b"[1]", b"{}", None):
        listener.handle(junk)
    assert asked == ["redis"] and listener.received == 1
