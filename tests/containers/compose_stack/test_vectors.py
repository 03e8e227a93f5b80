"""Vector collections and retrieval chat in the compose stack: the e2e tier's vector tests against the containers,
on compose's Qdrant server where its image can be had, else on the gateway's embedded Qdrant (the stack leaves the
qdrant service out then, and only the check of the server itself skips, saying why)."""

from __future__ import annotations

import httpx
import pytest

from tests.containers.compose_stack.conftest import Stack
from tests.e2e.test_vectors import (
    collection,
    test_a_question_finds_its_document_first,
    test_model_collections_exist_for_every_chat_model,
    test_retrieval_chat_stream_ends_with_the_documents_used,
    test_retrieval_chat_through_the_openai_sdk,
)
from tests.support.catalogs import ADMIN_KEY

pytestmark = [pytest.mark.containers, pytest.mark.timeout(3600)]

__all__ = [
    "collection",
    "test_a_question_finds_its_document_first",
    "test_model_collections_exist_for_every_chat_model",
    "test_retrieval_chat_stream_ends_with_the_documents_used",
    "test_retrieval_chat_through_the_openai_sdk",
]


def test_readiness_checks_the_qdrant_server(stack: Stack, gateway_url: str) -> None:
    stack.needs("qdrant")
    response = httpx.get(f"{gateway_url}/health/ready", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    assert response.json()["checks"]["qdrant"]["status"] == "healthy", response.text
