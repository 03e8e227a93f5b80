"""Vector collections and retrieval chat against the real Qdrant image of the compose stack: the e2e tier's
vector tests (embedded Qdrant there) collected here against the containers, and readiness naming Qdrant.

Skipped at collection, with the reason, where no Docker engine is reachable.
"""

from __future__ import annotations

import httpx
import pytest

from tests.containers.stack import docker_unavailable_reason
from tests.support.catalogs import ADMIN_KEY

_REASON = docker_unavailable_reason()
if _REASON:
    pytest.skip(_REASON, allow_module_level=True)

from tests.e2e.test_vectors import (  # noqa: E402
    collection,
    test_a_question_finds_its_document_first,
    test_model_collections_exist_for_every_chat_model,
    test_retrieval_chat_stream_ends_with_the_documents_used,
    test_retrieval_chat_through_the_openai_sdk,
)

pytestmark = [pytest.mark.containers, pytest.mark.timeout(3600)]

__all__ = [
    "collection",
    "test_a_question_finds_its_document_first",
    "test_model_collections_exist_for_every_chat_model",
    "test_retrieval_chat_stream_ends_with_the_documents_used",
    "test_retrieval_chat_through_the_openai_sdk",
]


def test_readiness_checks_the_qdrant_server(gateway_url: str) -> None:
    response = httpx.get(f"{gateway_url}/health/ready", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    assert response.json()["checks"]["qdrant"]["status"] == "healthy", response.text
