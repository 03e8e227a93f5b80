"""The response cache without Redis: key derivation, the cacheability matrix, the stream tee and replay."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.auth import Principal, Role
from gateway.cache import (
    CacheDecision,
    cache_headers,
    cache_key,
    decide,
    is_cacheable,
    replay_stream,
    tee_stream,
)
from gateway.catalog import ModelSpec
from gateway.inference import Endpoint, Prepared
from gateway.upstream.sse import DONE_EVENT
from tests.support.catalogs import chat_entry

KEY_A = Principal(key_id=uuid.UUID(int=1), name="a", role=Role.USER)
KEY_B = Principal(key_id=uuid.UUID(int=2), name="b", role=Role.USER)


def prepared(
    endpoint: Endpoint = "chat",
    *,
    name: str = "phi3",
    stream: bool = False,
    usage: bool = False,
    **fields: Any,
) -> Prepared:
    spec = ModelSpec(name=name, **chat_entry("http://x", upstream_model="upstream"))  # type: ignore[arg-type]
    data: dict[str, Any] = {"model": "upstream"}
    if endpoint == "embeddings":
        data["input"] = fields.pop("input", "hello")
    else:
        data["messages"] = [{"role": "user", "content": fields.pop("content", "hello")}]
        data.setdefault("temperature", 0.7)
    data.update(fields)
    return Prepared(
        endpoint=endpoint,
        spec=spec,
        requested_name=name,
        payload=orjson.dumps(data),
        stream=stream,
        client_wants_usage=usage,
    )


# ---- keys ---------------------------------------------------------------------------------------------


def test_same_request_same_key() -> None:
    assert cache_key(KEY_A, prepared(temperature=0)) == cache_key(KEY_A, prepared(temperature=0))


def test_key_is_namespaced_and_names_the_caller() -> None:
    key = cache_key(KEY_A, prepared())
    prefix, digest = key.rsplit(":", 1)
    assert prefix == f"citadel:cache:v1:{KEY_A.key_id}"
    assert len(digest) == 64


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (prepared(), prepared(content="hello!")),  # payload
        (prepared(), prepared(temperature=0)),
        (prepared(), prepared(name="phi3-alias")),  # public name (same upstream payload)
        (prepared(), prepared("completions")),  # endpoint
        (prepared(stream=True), prepared(stream=False)),
        (prepared(stream=True, usage=True), prepared(stream=True, usage=False)),
    ],
)
def test_any_difference_gives_another_key(left: Prepared, right: Prepared) -> None:
    assert cache_key(KEY_A, left) != cache_key(KEY_A, right)


def test_callers_never_share_a_key() -> None:
    request = prepared(temperature=0)
    assert cache_key(KEY_A, request) != cache_key(KEY_B, request)
    assert cache_key(KEY_A, request).rsplit(":", 1)[1] != cache_key(KEY_B, request).rsplit(":", 1)[1]


def test_fields_cannot_run_into_each_other() -> None:
    # 'ab' + 'c' and 'a' + 'bc' must not hash the same bytes.
    left = prepared(name="3phi")
    right = prepared(name="phi")
    right.endpoint = "chat3"  # type: ignore[assignment]
    assert cache_key(KEY_A, left) != cache_key(KEY_A, right)


# ---- what is cacheable --------------------------------------------------------------------------------

USE, REFRESH, BYPASS = CacheDecision.USE, CacheDecision.REFRESH, CacheDecision.BYPASS


@pytest.mark.parametrize(
    ("request_", "headers", "expected"),
    [
        # deterministic requests
        (prepared(temperature=0), {}, USE),
        (prepared(temperature=0.0, stream=True), {}, USE),
        (prepared(seed=7), {}, USE),
        (prepared(temperature=1.2, seed=0), {}, USE),
        (prepared("embeddings"), {}, USE),
        (prepared("completions", temperature=0), {}, USE),
        # sampled: only when the client asks
        (prepared(temperature=0.7), {}, BYPASS),
        (prepared(temperature=0.7), {"X-Cache": "force"}, USE),
        (prepared(temperature=0.7), {"x-cache": " FORCE "}, USE),
        (prepared(temperature=0.7), {"X-Cache": "yes"}, BYPASS),
        # Cache-Control from the client
        (prepared(temperature=0), {"Cache-Control": "no-store"}, BYPASS),
        (prepared("embeddings"), {"cache-control": "No-Store"}, BYPASS),
        (prepared(temperature=0.7), {"X-Cache": "force", "Cache-Control": "no-store"}, BYPASS),
        (prepared(temperature=0), {"Cache-Control": "no-cache"}, REFRESH),
        (prepared(temperature=0), {"Cache-Control": "max-age=0"}, REFRESH),
        (prepared(temperature=0), {"Cache-Control": "private, no-cache"}, REFRESH),
        (prepared(temperature=0), {"Pragma": "no-cache"}, REFRESH),
        (prepared(temperature=0), {"Cache-Control": "no-cache, no-store"}, BYPASS),
        (prepared(temperature=0), {"Cache-Control": "max-age=60"}, USE),
        (prepared(temperature=0.7), {"Cache-Control": "no-cache"}, BYPASS),
    ],
)
def test_decision_matrix(request_: Prepared, headers: dict[str, str], expected: CacheDecision) -> None:
    decision = decide(request_, headers)
    assert decision is expected
    assert is_cacheable(request_, headers) is (expected is not BYPASS)
    assert decision.read is (expected is USE)
    assert decision.write is (expected is not BYPASS)


def test_starlette_headers_are_read_case_insensitively() -> None:
    from starlette.datastructures import Headers

    headers = Headers(raw=[(b"cache-control", b"no-store")])
    assert decide(prepared(temperature=0), headers) is BYPASS


def test_response_headers() -> None:
    assert cache_headers(hit=True) == {"X-Cache": "HIT", "Cache-Control": "private"}
    assert cache_headers(hit=False) == {"X-Cache": "MISS", "Cache-Control": "private"}
    cache_headers(hit=True)["X-Extra"] = "1"
    assert "X-Extra" not in cache_headers(hit=True)


# ---- streams ------------------------------------------------------------------------------------------


def event(text: str) -> bytes:
    return b"data: " + orjson.dumps({"model": "phi3", "choices": [{"delta": {"content": text}}]}) + b"\n\n"


async def source(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def tee(chunks: list[bytes], max_bytes: int = 1 << 20) -> tuple[bytes, list[bytes]]:
    stored: list[bytes] = []
    relayed = [c async for c in tee_stream(source(chunks), max_bytes=max_bytes, on_complete=stored.append)]
    return b"".join(relayed), stored


async def test_tee_stores_a_complete_stream() -> None:
    chunks = [event("a"), event("b") + event("c"), DONE_EVENT]
    relayed, stored = await tee(chunks)
    assert relayed == b"".join(chunks)
    assert stored == [relayed]


async def test_tee_skips_an_error_stream() -> None:
    error = b'data: {"error":{"message":"cut","type":"upstream_error","param":null,"code":null}}\n\n'
    relayed, stored = await tee([event("a"), error, DONE_EVENT])
    assert relayed.endswith(DONE_EVENT)
    assert stored == []


async def test_tee_skips_a_stream_without_done() -> None:
    _, stored = await tee([event("a"), event("b")])
    assert stored == []


async def test_tee_skips_an_oversized_stream_but_relays_it() -> None:
    chunks = [event("a" * 100), event("b" * 100), DONE_EVENT]
    relayed, stored = await tee(chunks, max_bytes=150)
    assert relayed == b"".join(chunks)
    assert stored == []


async def test_tee_stores_nothing_when_the_client_goes_away() -> None:
    stored: list[bytes] = []
    stream = tee_stream(source([event("a"), DONE_EVENT]), max_bytes=1 << 20, on_complete=stored.append)
    assert await anext(stream) == event("a")
    await stream.aclose()
    assert stored == []


async def test_replay_yields_event_by_event() -> None:
    events = [event("a"), event("b"), event("c"), DONE_EVENT]
    body = events[0] + events[1] + events[2] + events[3]
    assert [chunk async for chunk in replay_stream(body)] == events
    assert [chunk async for chunk in replay_stream(b"")] == []


# ---- through the real request preparation -------------------------------------------------------------


@pytest.fixture
def service(tmp_path: Any) -> Any:
    from gateway.catalog import Catalog
    from gateway.inference import InferenceService
    from tests.conftest import make_settings

    spec = ModelSpec(name="phi3", **chat_entry("http://x", upstream_model="upstream"))  # type: ignore[arg-type]
    catalog = Catalog(models={"phi3": spec}, servers=[])
    settings = make_settings(tmp_path / "models.yaml")
    return InferenceService(settings=settings, catalog=catalog, pool=None)  # type: ignore[arg-type]


def test_the_clients_field_order_does_not_change_the_key(service: Any) -> None:
    one = b'{"model":"phi3","temperature":0,"messages":[{"role":"user","content":"hi"}],"seed":1}'
    two = b'{"seed":1, "messages":[{"content":"hi","role":"user"}], "model":"phi3", "temperature":0.0}'
    first = service.prepare(service.parse("chat", one), principal=KEY_A)
    second = service.prepare(service.parse("chat", two), principal=KEY_A)
    assert cache_key(KEY_A, first) == cache_key(KEY_A, second)
    assert cache_key(KEY_A, first) != cache_key(KEY_B, service.prepare(service.parse("chat", one), principal=KEY_B))


def test_the_models_default_temperature_is_not_deterministic(service: Any) -> None:
    body = b'{"model":"phi3","messages":[{"role":"user","content":"hi"}]}'
    assert decide(service.prepare(service.parse("chat", body), principal=KEY_A), {}) is BYPASS
    zero = b'{"model":"phi3","messages":[{"role":"user","content":"hi"}],"temperature":0}'
    assert decide(service.prepare(service.parse("chat", zero), principal=KEY_A), {}) is USE


@pytest.mark.parametrize(
    "fields",
    ['"temperature":0', '"temperature":0.0', '"temperature":0.7', '"seed":3,"temperature":1', '"seed":null', ""],
)
def test_prepare_knows_what_the_payload_says_about_determinism(service: Any, fields: str) -> None:
    """prepare() notes it (the hot path does not parse the payload again); the same answer as the payload's."""
    extra = f",{fields}" if fields else ""
    body = ('{"model":"phi3","messages":[{"role":"user","content":"hi"}]' + extra + "}").encode()
    known = service.prepare(service.parse("chat", body), principal=KEY_A)
    assert known.deterministic is not None
    assert decide(known, {}) is decide(dataclasses.replace(known, deterministic=None), {})
