"""The OpenAPI schema the gateway serves (gateway/api/openapi_schema.py): every route has a request body when it
reads one, a response model, its errors in OpenAI's shape, and no FastAPI 422; the schema refers only to what it
defines. The fuzz tier (tests/e2e/test_fuzz_api.py) checks the running gateway's answers against it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute

from gateway.api import openai
from gateway.api.openai import InferenceRoute
from gateway.app import create_app
from gateway.auth import PERMISSION_ATTR, Permission
from tests.conftest import make_settings
from tests.support.catalogs import chat_entry, write_models_file

ERROR_REF = "#/components/schemas/ErrorResponse"
# Routes that stay out of the schema (docs/api.md, "The OpenAPI schema").
OUTSIDE = {"/metrics", "/status", "/status/data", "/openapi.json"}
INFERENCE = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
# POST routes that take no body.
NO_BODY = {"/admin/reload", "/v1/batches/{batch_id}/cancel"}
# An upload: a multipart form (the file and its purpose), documented inline, not a JSON model.
MULTIPART = {"/v1/files"}
# Answers a stored file's bytes as they were uploaded, not JSON.
RAW_ANSWER = {"/v1/files/{file_id}/content"}


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    models = write_models_file(tmp_path_factory.mktemp("openapi") / "models.yaml", {"m": chat_entry("http://x")})
    return create_app(make_settings(models)).openapi()


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in schema["paths"].items() for method, op in item.items()]


def test_no_route_declares_fastapis_422(schema: dict[str, Any]) -> None:
    text = json.dumps(schema)
    assert '"422"' not in text and "HTTPValidationError" not in text


def test_every_post_route_documents_its_json_body(schema: dict[str, Any]) -> None:
    posts = [(path, op) for method, path, op in operations(schema) if method == "post" and path not in NO_BODY]
    assert len(posts) >= 8
    for path, op in posts:
        content = op.get("requestBody", {}).get("content", {})
        if path in MULTIPART:
            assert content["multipart/form-data"]["schema"]["required"], path
            continue
        body = content.get("application/json", {}).get("schema")
        assert body and "$ref" in body, path


def test_every_route_has_a_response_model_and_its_errors_in_openai_shape(schema: dict[str, Any]) -> None:
    for method, path, op in operations(schema):
        success = [code for code in op["responses"] if code.startswith("2")]
        assert success, (method, path)
        for code in success:
            content = op["responses"][code].get("content", {})
            if path in RAW_ANSWER:
                assert "application/octet-stream" in content, (method, path, code)
                continue
            assert content.get("application/json", {}).get("schema"), (method, path, code)
        errors = [code for code in op["responses"] if code[0] in "45"]
        assert "400" in errors, (method, path)
        for code in errors:
            declared = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
            assert declared == ERROR_REF or (path == "/health/ready" and code == "503"), (method, path, code)


def test_keyed_routes_declare_bearer_auth_and_401(schema: dict[str, Any]) -> None:
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for method, path, op in operations(schema):
        public = path in ("/health", "/health/ready")
        assert ("security" in op) is not public, (method, path)
        assert ("401" in op["responses"]) is not public, (method, path)


def test_streams_are_documented_event_by_event(schema: dict[str, Any]) -> None:
    for path in ("/v1/chat/completions", "/v1/completions"):
        content = schema["paths"][path]["post"]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "text/event-stream"}
        data = content["text/event-stream"]["itemSchema"]["properties"]["data"]
        assert data["if"] == {"const": "[DONE]"}
        assert {"$ref": ERROR_REF} in data["else"]["contentSchema"]["anyOf"]


def test_the_schema_refers_only_to_what_it_defines(schema: dict[str, Any]) -> None:
    defined = set(schema["components"]["schemas"])
    text = json.dumps(schema)
    referred = {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}
    assert referred <= defined, referred - defined
    assert not OUTSIDE & set(schema["paths"])


def test_the_inference_routes_return_the_upstream_bytes_unvalidated() -> None:
    """The hot path: no response model to validate or serialize (the shape is documented only)."""
    documented = [route for route in openai.router.routes if isinstance(route, APIRoute) and route.path in INFERENCE]
    assert len(documented) == 3
    for route in documented:
        assert route.response_model is None


def test_the_inference_routes_are_served_by_plain_routes_ahead_of_fastapis(tmp_path: Path) -> None:
    """The hot path skips FastAPI's dependency solving: plain Starlette routes, guarded, matched first."""
    models = write_models_file(tmp_path / "models.yaml", {"m": chat_entry("http://x")})
    app = create_app(make_settings(models))
    first = app.router.routes[:3]
    assert [type(route) for route in first] == [InferenceRoute] * 3
    assert {route.path for route in first} == set(INFERENCE)  # type: ignore[attr-defined]
    for route in first:
        assert getattr(route.endpoint, PERMISSION_ATTR) == Permission.INFERENCE  # type: ignore[attr-defined]
