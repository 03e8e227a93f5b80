"""The admission queue through a real gateway process (with PostgreSQL for its keys) in front of a fake upstream
whose `busy` model takes 0.2 s and reports how many ran at once and in which order: a flooding key does not
make another key wait behind it, batch work leaves interactive work a slot and carries vLLM's `priority`, a
client that hangs up leaves the line, the bounds answer 429/503 with Retry-After, and with two workers the turns
still hold."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.support import processes
from tests.support.catalogs import ADMIN_KEY, chat_entry
from tests.support.gateway import gateway_env, running_gateway

ROOT = Path(__file__).resolve().parents[2]
BUSY_S = 0.2


@pytest.fixture(scope="module")
def busy_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fake upstream of its own (its counters are this module's alone)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "services.fake_upstream", "--port", str(port), "--busy-s", str(BUSY_S)]
    upstream = processes.start(
        command,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        log=tmp_path_factory.mktemp("busy-upstream") / "upstream.log",
        health_url=f"{url}/health",
    )
    try:
        yield url
    finally:
        processes.stop(upstream)


def models(upstream: str) -> dict[str, dict[str, object]]:
    one = {**chat_entry(upstream, upstream_model="busy"), "max_concurrency": 1}
    two = {**chat_entry(upstream, upstream_model="busy"), "max_concurrency": 2}
    return {"one": one, "two": two}


def start(tmp_path: Path, upstream: str, postgres_url: str, *, workers: int = 1, **settings: str) -> Any:
    defaults = {
        "DATABASE_URL": postgres_url,
        "CITADEL_HEALTH_INTERVAL_S": "0.5",
        "CITADEL_ADMISSION_KEY_QUEUE_MAX": "40",
    }
    env = gateway_env(tmp_path, models(upstream), **{**defaults, **settings})
    return running_gateway(tmp_path, env, workers=workers)


async def new_key(client: httpx.AsyncClient, name: str, **fields: object) -> str:
    answer = await client.post(
        "/admin/keys",
        json={"name": f"{name}-{time.monotonic_ns()}", "role": "user", **fields},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert answer.status_code == 201, answer.text
    key: str = answer.json()["key"]
    return key


async def chat(
    client: httpx.AsyncClient, key: str, tag: str, *, model: str = "one", headers: dict[str, str] | None = None
) -> tuple[int, float, httpx.Response]:
    started = time.perf_counter()
    answer = await client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": tag}], "temperature": 0.7},
        headers={"Authorization": f"Bearer {key}", **(headers or {})},
    )
    return answer.status_code, time.perf_counter() - started, answer


async def upstream_stats(upstream: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        stats: dict[str, Any] = (await client.get(f"{upstream}/_stats")).json()
        return stats


async def reset(upstream: str) -> None:
    async with httpx.AsyncClient() as client:
        await client.post(f"{upstream}/_reset")


def client_for(url: str, *, connections: int = 64) -> httpx.AsyncClient:
    # No keep-alive: new connections, so with two workers the kernel spreads them over both.
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=0)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=60)


async def test_a_light_key_goes_next_while_another_key_floods_a_one_slot_model(
    tmp_path: Path, busy_upstream: str, postgres_url: str
) -> None:
    with start(tmp_path, busy_upstream, postgres_url) as gateway:
        async with client_for(gateway.url) as client:
            flood, light = await new_key(client, "flood"), await new_key(client, "light")
            await reset(busy_upstream)
            flooding = [asyncio.create_task(chat(client, flood, f"flood{i}")) for i in range(10)]
            await asyncio.sleep(0.5)  # the flood holds the slot and fills the line
            status, latency, _ = await chat(client, light, "light")
            results = await asyncio.gather(*flooding)
    stats = await upstream_stats(busy_upstream)
    assert status == 200 and all(code == 200 for code, _, _ in results)
    # The model's one slot, and the gate's one extra slot that the light key (nothing in flight) took at once.
    assert stats["busy_max_in_flight"] == 2
    order = stats["busy_order"]
    flood_started_then = sum(1 for tag in order[: order.index("light")] if tag.startswith("flood"))
    # The light key's request started while the flood's third or so ran, not after the 7 flood requests waiting.
    assert flood_started_then <= 4, order
    assert latency < 2 * BUSY_S + 0.5, latency
    assert max(latency for _, latency, _ in results) > 8 * BUSY_S  # the flood really queued


async def test_batch_work_leaves_interactive_work_a_slot_and_carries_vllms_priority(
    tmp_path: Path, busy_upstream: str, postgres_url: str
) -> None:
    with start(tmp_path, busy_upstream, postgres_url) as gateway:
        async with client_for(gateway.url) as client:
            bulk = await new_key(client, "bulk", priority="batch")
            user = await new_key(client, "user")
            await reset(busy_upstream)
            batch = [asyncio.create_task(chat(client, bulk, f"batch{i}", model="two")) for i in range(6)]
            await asyncio.sleep(0.3)
            interactive = [await chat(client, user, f"chat{i}", model="two") for i in range(3)]
            # A key of the interactive class may ask for batch (never the other way round).
            await chat(client, user, "asked", model="two", headers={"X-Citadel-Priority": "batch"})
            refused = await chat(client, user, "bad", model="two", headers={"X-Citadel-Priority": "urgent"})
            await asyncio.gather(*batch)
    stats = await upstream_stats(busy_upstream)
    priorities = dict(zip(stats["busy_order"], stats["busy_priorities"], strict=True))
    assert all(priorities[f"batch{i}"] == 1 for i in range(6))
    assert all(priorities[f"chat{i}"] == 0 for i in range(3))
    assert priorities["asked"] == 1
    # Batch held one of the two slots at most: every interactive request found the other free.
    assert all(code == 200 and latency < BUSY_S + 0.4 for code, latency, _ in interactive), interactive
    assert refused[0] == 400
    assert refused[2].json()["error"]["code"] == "invalid_priority"
    assert "bad" not in stats["busy_order"]


async def test_a_client_that_hangs_up_while_waiting_never_reaches_the_model(
    tmp_path: Path, busy_upstream: str, postgres_url: str
) -> None:
    with start(tmp_path, busy_upstream, postgres_url) as gateway:
        async with client_for(gateway.url) as client:
            key = await new_key(client, "impatient")
            await reset(busy_upstream)
            holding = [asyncio.create_task(chat(client, key, f"hold{i}")) for i in range(4)]
            await asyncio.sleep(0.3)
            with pytest.raises(httpx.ReadTimeout):
                await client.post(
                    "/v1/chat/completions",
                    json={"model": "one", "messages": [{"role": "user", "content": "gone"}], "temperature": 0.7},
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=0.2,
                )
            await asyncio.gather(*holding)
            metrics = (await client.get("/metrics")).text
    stats = await upstream_stats(busy_upstream)
    assert "gone" not in stats["busy_order"]
    assert 'citadel_llm_admission_total{model="one",outcome="client_gone",priority="interactive"} 1.0' in metrics
    assert 'citadel_llm_queue_depth{model="one",priority="interactive"} 0.0' in metrics


async def test_the_bounds_answer_429_for_a_keys_share_and_503_past_the_longest_wait(
    tmp_path: Path, busy_upstream: str, postgres_url: str
) -> None:
    with start(
        tmp_path, busy_upstream, postgres_url, CITADEL_ADMISSION_KEY_QUEUE_MAX="2", CITADEL_ADMISSION_MAX_WAIT_S="0.5"
    ) as gateway:
        async with client_for(gateway.url) as client:
            key = await new_key(client, "greedy")
            results = await asyncio.gather(*(chat(client, key, f"g{i}") for i in range(8)))
            ready = (await client.get("/health/ready")).json()
    by_status: dict[int, list[httpx.Response]] = {}
    for code, _, answer in results:
        by_status.setdefault(code, []).append(answer)
    assert set(by_status) <= {200, 429, 503}, {code: [a.text for a in answers] for code, answers in by_status.items()}
    assert 200 in by_status and 429 in by_status
    share = by_status[429][0]
    assert share.json()["error"]["code"] == "queue_share_exceeded"
    assert int(share.headers["Retry-After"]) >= 1
    for saturated in by_status.get(503, []):  # the two allowed to wait may wait past 0.5 s
        assert saturated.json()["error"]["code"] == "model_saturated"
        assert int(saturated.headers["Retry-After"]) >= 1
    gate = ready["checks"]["model:one"]["admission"]
    assert gate["capacity"] == 1 and set(gate["waiting"]) == {"interactive", "batch"}


async def test_with_two_workers_a_replicas_slots_are_shared_and_the_light_key_still_goes_first(
    tmp_path: Path, busy_upstream: str, postgres_url: str
) -> None:
    with start(tmp_path, busy_upstream, postgres_url, workers=2) as gateway:
        assert gateway.log.read_text().count("Application startup complete") == 2
        async with client_for(gateway.url) as client:
            flood, light = await new_key(client, "flood2"), await new_key(client, "light2")
            await reset(busy_upstream)
            flooding = [asyncio.create_task(chat(client, flood, f"flood{i}", model="two")) for i in range(24)]
            await asyncio.sleep(0.5)
            light_latencies = []
            for i in range(4):
                status, latency, _ = await chat(client, light, f"light{i}", model="two")
                assert status == 200
                light_latencies.append(latency)
            results = await asyncio.gather(*flooding)
    stats = await upstream_stats(busy_upstream)
    assert all(code == 200 for code, _, _ in results)
    # Each worker's share is one slot of the two, plus the one extra slot the light key takes when it has
    # nothing in flight (one request at a time here): never more than three at once.
    assert stats["busy_max_in_flight"] <= 3, stats["busy_max_in_flight"]
    flood_median = statistics.median(latency for _, latency, _ in results)
    # Without the queue the light key would wait behind ~half the flood (~1.2 s+ each); with it, about one turn.
    assert statistics.median(light_latencies) < flood_median, (light_latencies, flood_median)
    assert statistics.median(light_latencies) < 2 * BUSY_S + 0.3, light_latencies


async def test_an_alias_falls_back_past_a_dead_a_too_small_a_forbidden_and_a_saturated_target(
    tmp_path: Path, busy_upstream: str, postgres_url: str
) -> None:
    catalog = {
        "models": {
            "dead": chat_entry(f"http://127.0.0.1:{free_port()}"),
            "small": chat_entry(busy_upstream, upstream_model="busy", max_tokens=64),
            **models(busy_upstream),
        },
        "aliases": {"chain": ["dead", "small", "one", "two"]},
    }
    config = tmp_path / "aliased.yaml"
    config.write_text(yaml.safe_dump(catalog))
    with start(tmp_path, busy_upstream, postgres_url, CITADEL_CONFIG_PATH=str(config)) as gateway:
        async with client_for(gateway.url) as client:
            await asyncio.sleep(1.5)  # the prober has found the dead replica
            through_alias = await new_key(client, "alias-only", allowed_models=["chain"])
            only_two = await new_key(client, "two-only", allowed_models=["two"])
            long_prompt = "word " * 80  # ~100 tokens: more than small's 64-token context
            body = {"model": "chain", "messages": [{"role": "user", "content": long_prompt}], "temperature": 0.7}
            auth = {"Authorization": f"Bearer {through_alias}"}
            first = await client.post("/v1/chat/completions", json=body, headers=auth)
            # "one" busy (its one slot taken, more waiting): the alias passes it over as saturated.
            holder = await new_key(client, "holder")
            holding = [asyncio.create_task(chat(client, holder, f"hold{i}", model="one")) for i in range(3)]
            await asyncio.sleep(0.1)
            second = await client.post("/v1/chat/completions", json=body, headers=auth)
            await asyncio.gather(*holding)
            third = await client.post(
                "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {only_two}"}
            )
            listed = (await client.get("/v1/models", headers=auth)).json()
            metrics = (await client.get("/metrics")).text
    assert first.status_code == 200, first.text
    assert first.json()["model"] == "chain"  # the answer names what was asked for
    assert first.headers["X-Citadel-Model"] == "one"  # the header, what answered
    assert second.status_code == 200 and second.headers["X-Citadel-Model"] == "two"
    assert third.status_code == 200 and third.headers["X-Citadel-Model"] == "two"
    assert [card["id"] for card in listed["data"]] == ["chain"]  # the key's list names only the alias
    for target, reason in (("dead", "unavailable"), ("small", "context"), ("one", "saturated"), ("one", "not_allowed")):
        line = f'citadel_llm_alias_fallbacks_total{{alias="chain",reason="{reason}",target="{target}"}}'
        assert line in metrics, (line, [m for m in metrics.splitlines() if "alias" in m])
    assert 'citadel_llm_alias_requests_total{alias="chain",target="two"} 2.0' in metrics
    # The request metrics name the model that served, never the alias.
    assert 'model="chain"' not in metrics.replace('alias="chain"', "")


async def test_a_stream_holds_its_slot_until_its_last_chunk(
    tmp_path: Path, busy_upstream: str, postgres_url: str
) -> None:
    catalog = {
        **models(busy_upstream),
        "paced": {**chat_entry(busy_upstream, upstream_model="paced"), "max_concurrency": 1},
    }
    env = gateway_env(tmp_path, catalog, DATABASE_URL=postgres_url)
    with running_gateway(tmp_path, env) as gateway:
        async with client_for(gateway.url) as client:
            key = await new_key(client, "streamer")
            auth = {"Authorization": f"Bearer {key}"}
            body = {
                "model": "paced",
                "messages": [{"role": "user", "content": "s"}],
                "stream": True,
                "temperature": 0.7,
            }
            # "paced" and "one" share the replica and its one slot (same URL, same max_concurrency: one gate).
            async with client.stream("POST", "/v1/chat/completions", json=body, headers=auth) as stream:
                assert stream.status_code == 200
                started = time.perf_counter()
                waiting = asyncio.create_task(chat(client, key, "after-stream", model="one"))
                chunks = [chunk async for chunk in stream.aiter_bytes()]
                stream_ended = time.perf_counter() - started
            status, latency, _ = await waiting
    assert b"[DONE]" in b"".join(chunks)
    assert status == 200
    assert stream_ended > 1.0  # "paced" streams for ~2 s
    assert latency >= stream_ended - 0.1  # it waited for the stream's end, not for its first chunk
