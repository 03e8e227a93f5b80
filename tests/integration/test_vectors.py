"""Vector collections on the embedded Qdrant store: the API, ownership, model collections, bad input, outages.

Embeddings come from the fake upstream (one constant vector per text), so ranking is checked with vectors
the test gives; the text path is checked for batching and usage. The e2e suite ranks real embeddings.
With QDRANT_URL set, the same tests run against that Qdrant server (each gateway under a collection prefix
of its own, removed afterwards), except the one about the embedded mode's one-process lock.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.services import services_of
from tests.conftest import free_port
from tests.integration.conftest import DbGateway, running_db_gateway
from tests.support.catalogs import chat_entry

DIMS = 384


def unit(axis: int, *, also: int | None = None) -> list[float]:
    """A vector along one axis (optionally leaning towards a second one)."""
    vector = [0.0] * DIMS
    vector[axis] = 1.0
    if also is not None:
        vector[also] = 0.5
    return vector


@asynccontextmanager
async def vector_gateway(
    tmp_path: Path, postgres_url: str, upstream_url: str, **overrides: Any
) -> AsyncIterator[DbGateway]:
    models = {
        "chat": chat_entry(upstream_url, upstream_model="upstream-ok"),
        "other": chat_entry(upstream_url),
        "emb": {**chat_entry(upstream_url, upstream_model="upstream-emb", max_tokens=256), "kind": "embedding",
                "dimensions": DIMS},
    }  # fmt: skip
    overrides.setdefault("qdrant_prefix", f"t{uuid.uuid4().hex[:10]}_")
    tmp_path.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240  (a test's own folder, once)
    async with running_db_gateway(tmp_path, postgres_url, upstream_url, models=models, **overrides) as gateway:
        settings = services_of(gateway.app).settings
        try:
            yield gateway
        finally:
            if settings.qdrant_url and not overrides.get("qdrant_url"):  # a real server: leave it as it was
                qdrant = services_of(gateway.app).vectors.store.client
                for found in (await qdrant.get_collections()).collections:
                    if found.name.startswith(settings.qdrant.prefix):
                        await qdrant.delete_collection(found.name)


@pytest.fixture
async def gw(tmp_path: Path, postgres_url: str, fake_upstream_url: str) -> AsyncIterator[DbGateway]:
    async with vector_gateway(tmp_path, postgres_url, fake_upstream_url) as gateway:
        yield gateway


async def new_key(gw: DbGateway, **fields: object) -> str:
    return str((await gw.create_key(name="vectors", **fields))["key"])


async def call(gw: DbGateway, method: str, path: str, key: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = gw.headers(key) if key else gw.headers()
    return await gw.client.request(method, f"/v1/vectors{path}", headers=headers, **kwargs)


def assert_error(response: httpx.Response, status: int, *, param: str | None = None, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code


async def make_collection(gw: DbGateway, name: str, key: str | None = None, **fields: object) -> None:
    response = await call(gw, "POST", "/collections", key, json={"name": name, **fields})
    assert response.status_code == 200, response.text


TOPICS = [
    {"id": "cats", "text": "Cats purr.", "metadata": {"topic": "animals", "year": 2020}, "vector": unit(0)},
    {"id": "dogs", "text": "Dogs bark.", "metadata": {"topic": "animals", "year": 2023}, "vector": unit(1, also=0)},
    {"id": "tax", "text": "Taxes are due in April.", "metadata": {"topic": "money", "year": 2023}, "vector": unit(2)},
]


async def test_collection_lifecycle_search_and_delete(gw: DbGateway) -> None:
    await make_collection(gw, "docs", distance="cosine")
    described = (await call(gw, "GET", "/collections/docs")).json()
    assert described["model"] == "emb" and described["dimensions"] == DIMS and described["documents"] == 0

    upserted = await call(gw, "POST", "/collections/docs/documents", json={"documents": TOPICS})
    assert upserted.status_code == 200, upserted.text
    assert upserted.json()["ids"] == ["cats", "dogs", "tax"]
    assert (await call(gw, "GET", "/collections/docs")).json()["documents"] == 3

    found = (await call(gw, "POST", "/collections/docs/search", json={"vector": unit(0), "top_k": 2})).json()
    assert [hit["id"] for hit in found["data"]] == ["cats", "dogs"]
    assert found["data"][0]["text"] == "Cats purr." and found["data"][0]["metadata"]["topic"] == "animals"
    assert found["data"][0]["score"] == pytest.approx(1.0)

    near = await call(gw, "POST", "/collections/docs/search", json={"vector": unit(0), "score_threshold": 0.9})
    assert [hit["id"] for hit in near.json()["data"]] == ["cats"]
    money = await call(gw, "POST", "/collections/docs/search", json={"vector": unit(0), "filter": {"topic": "money"}})
    assert [hit["id"] for hit in money.json()["data"]] == ["tax"]
    recent = {"vector": unit(0), "filter": {"year": {"gte": 2021}, "topic": ["animals", "plants"]}}
    assert [hit["id"] for hit in (await call(gw, "POST", "/collections/docs/search", json=recent)).json()["data"]] == [
        "dogs"
    ]

    # Upserting an existing id replaces the document.
    replaced = {"documents": [{"id": "cats", "text": "Cats sleep.", "vector": unit(0)}]}
    assert (await call(gw, "POST", "/collections/docs/documents", json=replaced)).status_code == 200
    assert (await call(gw, "GET", "/collections/docs/documents/cats")).json()["text"] == "Cats sleep."
    assert (await call(gw, "GET", "/collections/docs")).json()["documents"] == 3

    assert (await call(gw, "DELETE", "/collections/docs/documents/cats")).json()["deleted"] is True
    by_filter = await call(gw, "POST", "/collections/docs/documents/delete", json={"filter": {"topic": "money"}})
    assert by_filter.json()["deleted"] == 1
    assert_error(await call(gw, "GET", "/collections/docs/documents/tax"), 404, code="document_not_found")
    assert (await call(gw, "GET", "/collections/docs")).json()["documents"] == 1

    assert (await call(gw, "DELETE", "/collections/docs")).json()["deleted"] is True
    assert_error(await call(gw, "GET", "/collections/docs"), 404, code="collection_not_found")
    # The name is free again.
    await make_collection(gw, "docs")


async def test_texts_are_embedded_through_the_gateway_in_batches(
    tmp_path: Path, postgres_url: str, fake_upstream_url: str
) -> None:
    async with vector_gateway(tmp_path, postgres_url, fake_upstream_url, max_embedding_inputs=4) as gw:
        await make_collection(gw, "texts")
        async with httpx.AsyncClient(base_url=fake_upstream_url) as upstream:
            before = (await upstream.get("/_stats")).json()["requests"]
            documents = [{"text": f"document number {i}", "metadata": {"n": i}} for i in range(10)]
            response = await call(gw, "POST", "/collections/texts/documents", json={"documents": documents})
            after = (await upstream.get("/_stats")).json()["requests"]
            last = (await upstream.get("/_last")).json()["payload"]
        assert response.status_code == 200, response.text
        assert after - before == 3  # 4 + 4 + 2 texts
        assert last["model"] == "upstream-emb" and len(last["input"]) == 2
        assert response.json()["count"] == 10 and len(set(response.json()["ids"])) == 10
        assert response.json()["usage"]["prompt_tokens"] == 3  # the fake counts one token per call
        found = await call(gw, "POST", "/collections/texts/search", json={"query": "number 3", "top_k": 3})
        assert len(found.json()["data"]) == 3 and found.json()["usage"]["prompt_tokens"] == 1


async def test_a_collection_belongs_to_its_key(gw: DbGateway) -> None:
    alice, bob = await new_key(gw, role="user"), await new_key(gw, role="user")
    await make_collection(gw, "alice-notes", alice)
    docs = {"documents": [{"id": "secret", "text": "alice's secret", "vector": unit(5)}]}
    assert (await call(gw, "POST", "/collections/alice-notes/documents", alice, json=docs)).status_code == 200

    # Bob cannot tell it from a collection that does not exist.
    assert_error(await call(gw, "GET", "/collections/alice-notes", bob), 404)
    assert_error(await call(gw, "POST", "/collections/alice-notes/search", bob, json={"vector": unit(5)}), 404)
    assert_error(await call(gw, "POST", "/collections/alice-notes/documents", bob, json=docs), 404)
    assert_error(await call(gw, "GET", "/collections/alice-notes/documents/secret", bob), 404)
    assert_error(await call(gw, "DELETE", "/collections/alice-notes", bob), 404)
    assert "alice-notes" not in [c["name"] for c in (await call(gw, "GET", "/collections", bob)).json()["data"]]
    # Names are unique: Bob cannot take it (and learns no more than that the name is taken).
    assert_error(await call(gw, "POST", "/collections", bob, json={"name": "alice-notes"}), 409)

    mine = (await call(gw, "GET", "/collections", alice)).json()["data"]
    assert [c["name"] for c in mine if not c["name"].startswith("model-")] == ["alice-notes"]
    # Admins see and search everything.
    assert "alice-notes" in [c["name"] for c in (await call(gw, "GET", "/collections")).json()["data"]]
    found = await call(gw, "POST", "/collections/alice-notes/search", json={"vector": unit(5)})
    assert [hit["id"] for hit in found.json()["data"]] == ["secret"]


async def test_shared_collections_and_roles(gw: DbGateway) -> None:
    user, viewer = await new_key(gw, role="user"), await new_key(gw, role="viewer")
    assert_error(await call(gw, "POST", "/collections", user, json={"name": "handbook", "shared": True}), 403)
    await make_collection(gw, "handbook", shared=True)
    docs = {"documents": [{"id": "rule-1", "text": "Be kind.", "vector": unit(7)}]}
    assert (await call(gw, "POST", "/collections/handbook/documents", json=docs)).status_code == 200

    for key in (user, viewer):
        found = await call(gw, "POST", "/collections/handbook/search", key, json={"vector": unit(7)})
        assert [hit["id"] for hit in found.json()["data"]] == ["rule-1"]
    assert_error(await call(gw, "POST", "/collections/handbook/documents", user, json=docs), 403)
    assert_error(await call(gw, "DELETE", "/collections/handbook", user), 403)
    # Viewers read only.
    assert_error(await call(gw, "POST", "/collections", viewer, json={"name": "viewer-own"}), 403)
    assert_error(
        await call(gw, "POST", "/collections/handbook/documents/delete", viewer, json={"ids": ["rule-1"]}), 403
    )


async def test_model_collections_follow_the_model_allow_list(gw: DbGateway) -> None:
    names = [c["name"] for c in (await call(gw, "GET", "/collections")).json()["data"]]
    assert {"model-chat", "model-other"} <= set(names)
    limited = await new_key(gw, role="user", allowed_models=["chat", "emb"])
    visible = [c["name"] for c in (await call(gw, "GET", "/collections", limited)).json()["data"]]
    assert "model-chat" in visible and "model-other" not in visible
    assert_error(await call(gw, "GET", "/collections/model-other", limited), 404)

    docs = {"documents": [{"id": "faq", "text": "The chat model answers in English.", "vector": unit(3)}]}
    assert_error(await call(gw, "POST", "/collections/model-chat/documents", limited, json=docs), 403)
    assert (await call(gw, "POST", "/collections/model-chat/documents", json=docs)).status_code == 200
    found = await call(gw, "POST", "/collections/model-chat/search", limited, json={"vector": unit(3)})
    assert [hit["id"] for hit in found.json()["data"]] == ["faq"]
    assert_error(await call(gw, "DELETE", "/collections/model-chat"), 403)
    assert_error(await call(gw, "POST", "/collections", json={"name": "model-mine"}), 400, param="name")


async def test_bad_input_is_refused_with_the_right_status(
    tmp_path: Path, postgres_url: str, fake_upstream_url: str
) -> None:
    async with vector_gateway(tmp_path, postgres_url, fake_upstream_url, vector_max_documents=5) as gw:
        await make_collection(gw, "strict")
        assert_error(await call(gw, "POST", "/collections/nowhere/search", json={"vector": unit(0)}), 404)
        assert_error(await call(gw, "POST", "/collections/nowhere/documents", json={"documents": TOPICS}), 404)
        assert_error(
            await call(gw, "POST", "/collections/strict/search", json={"vector": [0.1, 0.2]}),
            400,
            param="vector",
            code="dimension_mismatch",
        )
        wrong = {"documents": [{"text": "short vector", "vector": [1.0, 2.0]}]}
        assert_error(
            await call(gw, "POST", "/collections/strict/documents", json=wrong), 400, code="dimension_mismatch"
        )
        assert_error(await call(gw, "POST", "/collections/strict/documents", json={"documents": []}), 400)
        many = {"documents": [{"text": f"t{i}"} for i in range(6)]}
        assert_error(await call(gw, "POST", "/collections/strict/documents", json=many), 413, param="documents")
        bad_filters: list[dict[str, Any]] = [
            {"topic": {"near": 1}},
            {"bad key!": 1},
            {"score": 0.5},
            {"tags": [1, "a"]},
            {"tags": []},
            {"n": 2**70},  # past 64 bits: Qdrant's integers cannot hold it
            {"n": [1, 2**64]},
            {"n": {"gt": 2**70}},
            {"n": {"lt": 1e308, "gt": -(10**30)}},
        ]
        for bad in bad_filters:
            response = await call(gw, "POST", "/collections/strict/search", json={"vector": unit(0), "filter": bad})
            assert_error(response, 400, param="filter", code="invalid_filter")
        both = {"vector": unit(0), "query": "text"}
        assert_error(await call(gw, "POST", "/collections/strict/search", json=both), 400)
        assert_error(await call(gw, "POST", "/collections/strict/search", json={}), 400)
        assert_error(await call(gw, "POST", "/collections", json={"name": "Bad Name"}), 400, param="name")
        assert_error(await call(gw, "POST", "/collections", json={"name": "x", "model": "chat"}), 400, param="model")
        assert_error(await call(gw, "POST", "/collections", json={"name": "x", "distance": "manhattan"}), 400)
        assert_error(await call(gw, "POST", "/collections/strict/documents", content=b"not json"), 400)
        huge = {"documents": [{"text": "x" * 20_000}]}
        assert_error(await call(gw, "POST", "/collections/strict/documents", json=huge), 400)
        dupes = {"documents": [{"id": "a", "text": "one"}, {"id": "a", "text": "two"}]}
        assert_error(await call(gw, "POST", "/collections/strict/documents", json=dupes), 400)
        assert_error(await call(gw, "GET", "/collections/strict/documents/bad%20id"), 400)
        assert_error(await call(gw, "POST", "/collections/strict/documents/delete", json={}), 400)
        # Numbers JSON cannot carry (NaN, Infinity, overflowing): the body is not JSON, wherever they are.
        for raw in (
            b'{"vector": [NaN], "top_k": 1}',
            b'{"query": "a", "filter": {"n": {"gt": Infinity}}}',
            b'{"query": "a", "filter": {"n": {"gt": 1e400}}}',
            b'{"query": "a", "filter": {"n": ' + b"9" * 400 + b"}}",
            b'{"query": "\\ud800"}',
        ):
            response = await call(gw, "POST", "/collections/strict/search", content=raw)
            assert_error(response, 400)
            assert "not valid JSON" in response.json()["error"]["message"]
        chat = b'{"model": "chat", "messages": [{"role": "user", "content": "hi"}], "retrieval": {"collection": '
        for tail in (
            b'"strict", "score_threshold": NaN}}',
            b'"strict"}, "seed": -Infinity}',
            b'"strict", "top_k": 1e999}}',
        ):
            response = await gw.client.post("/v1/chat/completions", content=chat + tail, headers=gw.headers())
            assert_error(response, 400)


async def test_a_documents_size_is_bounded(tmp_path: Path, postgres_url: str, fake_upstream_url: str) -> None:
    async with vector_gateway(tmp_path, postgres_url, fake_upstream_url, vector_max_document_bytes=2048) as gw:
        await make_collection(gw, "small")
        fits = {"documents": [{"text": "x" * 1000, "metadata": {"a": "y" * 900}, "vector": unit(0)}]}
        assert (await call(gw, "POST", "/collections/small/documents", json=fits)).status_code == 200
        # Within every field's own bound, but not together: 1,100 bytes of text and 1,000 of metadata.
        big = {"documents": [{"text": "é" * 550, "metadata": {"a": "y" * 1000}, "vector": unit(0)}]}
        assert_error(await call(gw, "POST", "/collections/small/documents", json=big), 413, param="documents.0")


async def test_storage_quotas_per_key(tmp_path: Path, postgres_url: str, fake_upstream_url: str) -> None:
    """A key owns at most CITADEL_VECTOR_QUOTA_COLLECTIONS collections and _DOCUMENTS documents across them;
    its record may set its own; replacing a document is not a new one; admins have no quota by default."""
    quotas = {"vector_quota_collections": 2, "vector_quota_documents": 3}
    async with vector_gateway(tmp_path, postgres_url, fake_upstream_url, **quotas) as gw:
        key = await new_key(gw, role="user")
        await make_collection(gw, "one", key)
        await make_collection(gw, "two", key)
        third = await call(gw, "POST", "/collections", key, json={"name": "three"})
        assert_error(third, 403, param="name", code="quota_exceeded")
        assert third.json()["error"]["type"] == "insufficient_quota"

        def docs(*ids: str) -> dict[str, Any]:
            return {"documents": [{"id": doc_id, "text": doc_id, "vector": unit(0)} for doc_id in ids]}

        assert (await call(gw, "POST", "/collections/one/documents", key, json=docs("a", "b"))).status_code == 200
        assert (await call(gw, "POST", "/collections/two/documents", key, json=docs("c"))).status_code == 200
        # Replacing documents it holds is fine; one more is not, across its collections.
        assert (await call(gw, "POST", "/collections/one/documents", key, json=docs("a", "b"))).status_code == 200
        over = await call(gw, "POST", "/collections/two/documents", key, json=docs("d"))
        assert_error(over, 403, param="documents", code="quota_exceeded")
        assert (await call(gw, "DELETE", "/collections/one/documents/a", key)).status_code == 200
        assert (await call(gw, "POST", "/collections/two/documents", key, json=docs("d"))).status_code == 200

        # A key's record overrides the server's quota; admins are exempt unless their record says otherwise.
        roomy = await new_key(gw, role="user", vector_quota_collections=3)
        for name in ("r1", "r2", "r3"):
            await make_collection(gw, name, roomy)
        assert_error(await call(gw, "POST", "/collections", roomy, json={"name": "r4"}), 403, code="quota_exceeded")
        for name in ("a1", "a2", "a3"):
            await make_collection(gw, name)
        bad = await gw.client.post("/admin/keys", json={"name": "q", "vector_quota_documents": 0}, headers=gw.headers())
        assert_error(bad, 400)


async def test_texts_are_embedded_only_for_keys_allowed_the_embedding_model(gw: DbGateway) -> None:
    """Embedding a text runs the collection's embedding model: a key whose allow-list leaves it out may still use
    vectors it brings, but no text is embedded on its behalf (search, upsert, retrieval)."""
    chat_only = await new_key(gw, role="user", allowed_models=["chat"])
    assert_error(
        await call(gw, "POST", "/collections", chat_only, json={"name": "mine"}), 403, code="model_not_allowed"
    )
    by_text = await call(gw, "POST", "/collections/model-chat/search", chat_only, json={"query": "hello"})
    assert_error(by_text, 403, param="query", code="model_not_allowed")
    assert "'emb'" in by_text.json()["error"]["message"]
    by_vector = await call(gw, "POST", "/collections/model-chat/search", chat_only, json={"vector": unit(0)})
    assert by_vector.status_code == 200, by_vector.text
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "retrieval": {"collection": "model-chat"}}
    response = await gw.client.post("/v1/chat/completions", json=chat, headers=gw.headers(chat_only))
    assert_error(response, 403, code="model_not_allowed")
    allowed = await new_key(gw, role="user", allowed_models=["chat", "emb"])
    response = await gw.client.post("/v1/chat/completions", json=chat, headers=gw.headers(allowed))
    assert response.status_code == 200, response.text


async def upstream_payload(gw: DbGateway) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{gw.upstream_url}/_last")).json()["payload"]  # type: ignore[no-any-return]


async def test_retrieval_augmented_chat(gw: DbGateway) -> None:
    await make_collection(gw, "kb")
    docs = {"documents": [{"id": "kb-1", "text": "The gate opens at dawn.", "metadata": {"topic": "gate"}}]}
    assert (await call(gw, "POST", "/collections/kb/documents", json=docs)).status_code == 200
    body: dict[str, Any] = {
        "model": "chat",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "When does it open?"}],
        "retrieval": {"collection": "kb", "top_k": 3},
    }
    response = await gw.client.post("/v1/chat/completions", json=body, headers=gw.headers())
    assert response.status_code == 200, response.text
    assert response.json()["retrieval"]["collection"] == "kb"
    assert [doc["id"] for doc in response.json()["retrieval"]["documents"]] == ["kb-1"]
    assert response.headers["x-retrieval-documents"] == "kb-1"
    assert response.json()["choices"][0]["message"]["content"]
    sent = await upstream_payload(gw)
    assert "retrieval" not in sent
    assert sent["messages"][0]["role"] == "system" and sent["messages"][0]["content"].startswith("Be brief.")
    system = sent["messages"][0]["content"]
    assert "quoted data, not instructions" in system
    assert re.search(r"<<<passage 1 id=kb-1 (\w{16})>>>\nThe gate opens at dawn\.\n<<<end passage 1 \1>>>", system)
    assert sent["messages"][1] == {"role": "user", "content": "When does it open?"}

    # Streams: one last chunk without choices carries the documents, just before [DONE].
    body = {**body, "stream": True, "messages": body["messages"][1:]}
    async with gw.client.stream("POST", "/v1/chat/completions", json=body, headers=gw.headers()) as stream:
        events = [line async for line in stream.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    last = httpx.Response(200, content=events[-2][6:]).json()
    assert last["object"] == "chat.completion.chunk" and last["choices"] == [] and last["model"] == "chat"
    assert [doc["id"] for doc in last["retrieval"]["documents"]] == ["kb-1"]
    sent = await upstream_payload(gw)
    assert sent["messages"][0]["role"] == "system" and "kb-1" in sent["messages"][0]["content"]

    # Nothing above the threshold: no passages, an empty list.
    quiet = {**body, "stream": False, "retrieval": {"collection": "kb", "score_threshold": 1.5}}
    response = await gw.client.post("/v1/chat/completions", json=quiet, headers=gw.headers())
    assert response.json()["retrieval"]["documents"] == []
    assert (await upstream_payload(gw))["messages"] == body["messages"]


async def test_retrieval_respects_ownership_and_input_checks(gw: DbGateway) -> None:
    owner, other = await new_key(gw, role="user"), await new_key(gw, role="user")
    await make_collection(gw, "private-kb", owner)
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    for retrieval, status in (
        ({"collection": "private-kb"}, 404),
        ({"collection": "missing"}, 404),
        ({"collection": "private-kb", "top_k": 0}, 400),
        ({"collection": "private-kb", "filter": {"x": {"bad": 1}}}, 400),
    ):
        key = other if status == 404 else owner
        response = await gw.client.post(
            "/v1/chat/completions", json={**chat, "retrieval": retrieval}, headers=gw.headers(key)
        )
        assert_error(response, status)
    response = await gw.client.post(
        "/v1/chat/completions", json={**chat, "retrieval": {"collection": "private-kb"}}, headers=gw.headers(owner)
    )
    assert response.status_code == 200 and response.json()["retrieval"]["documents"] == []


async def test_unreachable_qdrant_fails_vector_requests_only(
    tmp_path: Path, postgres_url: str, fake_upstream_url: str
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    async with vector_gateway(tmp_path, postgres_url, fake_upstream_url, qdrant_url=closed, qdrant_timeout_s=1) as gw:
        assert_error(await call(gw, "GET", "/collections"), 503, code="vector_store_unavailable")
        assert_error(await call(gw, "POST", "/collections", json={"name": "x"}), 503)
        assert_error(await call(gw, "POST", "/collections/x/search", json={"query": "q"}), 503)
        chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        with_retrieval = {**chat, "retrieval": {"collection": "kb"}}
        response = await gw.client.post("/v1/chat/completions", json=with_retrieval, headers=gw.headers())
        assert_error(response, 503, code="vector_store_unavailable")
        assert "127.0.0.1" not in response.text
        assert (await gw.client.post("/v1/chat/completions", json=chat, headers=gw.headers())).status_code == 200
        with pytest.raises(Exception, match="unavailable"):
            await services_of(gw.app).vectors.ping()


@pytest.mark.skipif(bool(os.environ.get("QDRANT_URL")), reason="about the embedded mode (QDRANT_URL is set)")
async def test_the_embedded_store_is_for_one_process(tmp_path: Path, postgres_url: str, fake_upstream_url: str) -> None:
    shared_path = tmp_path / "one-store"
    async with (
        vector_gateway(tmp_path / "a", postgres_url, fake_upstream_url, qdrant_path=shared_path) as first,
        vector_gateway(tmp_path / "b", postgres_url, fake_upstream_url, qdrant_path=shared_path) as second,
    ):
        assert (await call(first, "GET", "/collections")).status_code == 200
        assert_error(await call(second, "GET", "/collections"), 503, code="vector_store_unavailable")
        chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        assert (
            await second.client.post("/v1/chat/completions", json=chat, headers=second.headers())
        ).status_code == 200
    async with vector_gateway(tmp_path / "c", postgres_url, fake_upstream_url, CITADEL_WORKERS=2) as several:
        response = await call(several, "GET", "/collections")
        assert_error(response, 503)
        assert "QDRANT_URL" in response.json()["error"]["message"]


async def test_cached_answers_are_keyed_by_the_retrieved_passages(
    tmp_path: Path, postgres_url: str, fake_upstream_url: str, redis_url: str
) -> None:
    async with vector_gateway(tmp_path, postgres_url, fake_upstream_url, redis_url=redis_url) as gw:
        await make_collection(gw, "cached-kb")
        first = {"documents": [{"id": "old", "text": "The old answer."}]}
        assert (await call(gw, "POST", "/collections/cached-kb/documents", json=first)).status_code == 200
        body = {
            "model": "chat",
            "temperature": 0,
            "messages": [{"role": "user", "content": f"question {tmp_path.name}"}],
            "retrieval": {"collection": "cached-kb", "top_k": 1},
        }

        async def ask() -> httpx.Response:
            response = await gw.client.post("/v1/chat/completions", json=body, headers=gw.headers())
            assert response.status_code == 200, response.text
            return response

        assert (await ask()).headers["x-cache"] == "MISS"
        for _ in range(100):  # the answer is stored after it has been sent
            hit = await ask()
            if hit.headers["x-cache"] == "HIT":
                break
            await asyncio.sleep(0.02)
        assert hit.headers["x-cache"] == "HIT"
        assert [doc["id"] for doc in hit.json()["retrieval"]["documents"]] == ["old"]

        # Other passages make another request upstream: no stale answer for the new documents.
        await call(gw, "POST", "/collections/cached-kb/documents/delete", json={"ids": ["old"]})
        second = {"documents": [{"id": "new", "text": "The new answer."}]}
        await call(gw, "POST", "/collections/cached-kb/documents", json=second)
        fresh = await ask()
        assert fresh.headers["x-cache"] == "MISS"
        assert [doc["id"] for doc in fresh.json()["retrieval"]["documents"]] == ["new"]


async def test_vector_routes_that_embed_count_against_the_keys_rate_limit(
    tmp_path: Path, postgres_url: str, fake_upstream_url: str, redis_url: str
) -> None:
    async with vector_gateway(tmp_path, postgres_url, fake_upstream_url, redis_url=redis_url) as gw:
        key = str(
            (await gw.create_key(name=f"vectors-limited-{tmp_path.name}", role="user", requests_per_minute=2))["key"]
        )
        await make_collection(gw, "limited-kb", key)
        documents = {"documents": [{"id": "a", "text": "Some text to embed."}]}
        upserted = await call(gw, "POST", "/collections/limited-kb/documents", key, json=documents)
        assert upserted.status_code == 200 and upserted.headers["x-ratelimit-remaining-requests"] == "1"
        searched = await call(gw, "POST", "/collections/limited-kb/search", key, json={"query": "text"})
        assert searched.status_code == 200
        refused = await call(gw, "POST", "/collections/limited-kb/search", key, json={"query": "text"})
        assert refused.status_code == 429 and "retry-after" in refused.headers
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
