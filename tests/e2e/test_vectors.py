"""Vector search and retrieval-augmented chat through the real stack: real all-MiniLM-L6-v2 embeddings, the
embedded Qdrant store, the demo chat model. The demo model answers noise, so the chat tests check the
retrieval metadata (which documents the prompt was given), not the text."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.support.catalogs import ADMIN_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

DOCUMENTS = [
    {"id": "volcano", "text": "Volcanoes erupt when molten rock called magma rises through the Earth's crust."},
    {"id": "bread", "text": "To bake bread, mix flour, water, yeast and salt, let the dough rise, then bake it."},
    {"id": "football", "text": "A football match lasts ninety minutes, played in two halves of forty-five."},
    {"id": "python", "text": "Python is a programming language known for its readable syntax and large library."},
    {"id": "tides", "text": "Ocean tides are caused mainly by the gravitational pull of the Moon on the sea."},
    {"id": "coffee", "text": "Coffee beans are roasted seeds of the coffea plant, brewed with hot water."},
]


@pytest.fixture(scope="module")
def collection(gateway_url: str) -> str:
    """A collection of short documents on different topics, embedded by the real model."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=gateway_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120) as http:
        created = http.post("/v1/vectors/collections", json={"name": name})
        assert created.status_code == 200, created.text
        assert created.json()["model"] == "embed" and created.json()["dimensions"] == 384
        upserted = http.post(f"/v1/vectors/collections/{name}/documents", json={"documents": DOCUMENTS})
        assert upserted.status_code == 200, upserted.text
        assert upserted.json()["count"] == len(DOCUMENTS) and upserted.json()["usage"]["prompt_tokens"] > 0
    return name


def search(gateway_url: str, name: str, **body: Any) -> list[dict[str, Any]]:
    with httpx.Client(base_url=gateway_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120) as http:
        response = http.post(f"/v1/vectors/collections/{name}/search", json=body)
    assert response.status_code == 200, response.text
    return response.json()["data"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("What makes a volcano erupt?", "volcano"),
        ("Why does the sea level rise and fall every day?", "tides"),
        ("How long is a soccer game?", "football"),
    ],
)
def test_a_question_finds_its_document_first(gateway_url: str, collection: str, question: str, expected: str) -> None:
    hits = search(gateway_url, collection, query=question, top_k=3)
    assert hits[0]["id"] == expected, [(hit["id"], round(hit["score"], 3)) for hit in hits]
    assert hits[0]["score"] > hits[1]["score"]


def test_model_collections_exist_for_every_chat_model(gateway_url: str) -> None:
    with httpx.Client(base_url=gateway_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60) as http:
        names = {c["name"] for c in http.get("/v1/vectors/collections").json()["data"]}
    assert {"model-mixtral", "model-hermes", "model-openchat", "model-phi3"} <= names


def test_retrieval_chat_through_the_openai_sdk(client: openai.OpenAI, collection: str) -> None:
    answer = client.chat.completions.create(
        model="phi3",
        messages=[{"role": "user", "content": "How do I bake bread at home?"}],
        max_tokens=16,
        extra_body={"retrieval": {"collection": collection, "top_k": 2}},
    )
    assert answer.model == "phi3" and answer.choices[0].finish_reason in ("stop", "length")
    retrieval = (answer.model_extra or {})["retrieval"]
    assert retrieval["collection"] == collection
    assert retrieval["documents"][0]["id"] == "bread"
    assert len(retrieval["documents"]) == 2


def test_retrieval_chat_stream_ends_with_the_documents_used(client: openai.OpenAI, collection: str) -> None:
    stream = client.chat.completions.create(
        model="mixtral",
        messages=[{"role": "user", "content": "Tell me about roasting coffee beans."}],
        max_tokens=8,
        stream=True,
        extra_body={"retrieval": {"collection": collection, "top_k": 1}},
    )
    chunks = list(stream)
    assert any(chunk.choices and chunk.choices[0].finish_reason for chunk in chunks)
    last = chunks[-1]
    assert last.choices == []
    assert [doc["id"] for doc in (last.model_extra or {})["retrieval"]["documents"]] == ["coffee"]
