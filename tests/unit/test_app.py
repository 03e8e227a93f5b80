"""The gateway in process (no upstream reached): contract of errors, auth, request ids, models and bounds."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute

from gateway.app import PUBLIC_PATHS, ROUTERS, create_app
from tests.conftest import make_settings
from tests.support.catalogs import ADMIN_KEY, chat_entry, write_models_file

CHAT = {"model": "chat-a", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    embed = {**chat_entry("http://127.0.0.1:9"), "kind": "embedding", "dimensions": 384}
    models = write_models_file(
        tmp_path / "models.yaml", {"chat-a": chat_entry("http://127.0.0.1:9", max_tokens=100), "emb": embed}
    )
    app = create_app(make_settings(models, max_body_bytes=2048, max_n=2))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            client.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
            yield client


def assert_openai_error(response: httpx.Response, status: int, error_type: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type
    return error  # type: ignore[no-any-return]


async def test_health_needs_no_key_and_has_the_contract_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"Authorization": ""})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy" and body["service"] == "gateway" and body["timestamp"]


async def test_every_other_route_needs_a_key(client: httpx.AsyncClient) -> None:
    routes = [r for router in ROUTERS for r in router.routes if isinstance(r, APIRoute) and r.path not in PUBLIC_PATHS]
    assert len(routes) >= 5
    for route in routes:
        for method in route.methods:
            path = route.path.replace("{model}", "chat-a")
            for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic x"}):
                response = await client.request(method, path, headers=headers)
                error = assert_openai_error(response, 401, "authentication_error")
                assert response.headers["www-authenticate"] == "Bearer"
                assert "wrong-key" not in str(error)


async def test_request_id_is_echoed_or_made(client: httpx.AsyncClient) -> None:
    given = await client.get("/v1/models", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = await client.get("/v1/models")
    assert len(made.headers["x-request-id"]) == 32
    unsafe = await client.get("/v1/models", headers={"X-Request-ID": "bad id;<script>"})
    assert unsafe.headers["x-request-id"] != "bad id;<script>"
    refused = await client.get("/v1/models", headers={"Authorization": "", "X-Request-ID": "r-1"})
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "r-1"


async def test_models_list_and_get(client: httpx.AsyncClient) -> None:
    listing = (await client.get("/v1/models")).json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["chat-a", "emb"]
    card = (await client.get("/v1/models/emb")).json()
    assert card["id"] == "emb" and card["object"] == "model" and card["dimensions"] == 384
    assert_openai_error(await client.get("/v1/models/nope"), 404, "invalid_request_error")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
async def test_unknown_model_is_404(client: httpx.AsyncClient, path: str) -> None:
    body = {"model": "nope", "messages": [{"role": "user", "content": "x"}], "prompt": "x", "input": "x"}
    error = assert_openai_error(await client.post(path, json=body), 404, "invalid_request_error")
    assert error["code"] == "model_not_found" and error["param"] == "model"


async def test_wrong_endpoint_for_the_model_kind_is_400(client: httpx.AsyncClient) -> None:
    assert_openai_error(
        await client.post("/v1/embeddings", json={"model": "chat-a", "input": "x"}), 400, "invalid_request_error"
    )
    body = {"model": "emb", "messages": [{"role": "user", "content": "x"}]}
    assert_openai_error(await client.post("/v1/chat/completions", json=body), 400, "invalid_request_error")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**CHAT, "max_tokens": 101}, "max_tokens"),
        ({**CHAT, "max_completion_tokens": 500}, "max_completion_tokens"),
        ({**CHAT, "n": 3}, "n"),
        ({**CHAT, "temperature": "hot"}, "temperature"),
    ],
)
async def test_bounds_are_enforced_with_400(client: httpx.AsyncClient, body: dict[str, object], param: str) -> None:
    error = assert_openai_error(await client.post("/v1/chat/completions", json=body), 400, "invalid_request_error")
    assert error["param"] == param


async def test_malformed_json_and_non_objects_are_400(client: httpx.AsyncClient) -> None:
    for content in (b"{oops", b"[]", b"42", b""):
        response = await client.post(
            "/v1/chat/completions", content=content, headers={"Content-Type": "application/json"}
        )
        assert_openai_error(response, 400, "invalid_request_error")


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    body = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    error = assert_openai_error(await client.post("/v1/chat/completions", json=body), 413, "invalid_request_error")
    assert "x" * 50 not in str(error)

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    # No Content-Length (chunked upload): refused as soon as the limit is passed.
    response = await client.post("/v1/chat/completions", content=chunked())
    assert_openai_error(response, 413, "invalid_request_error")


@pytest.mark.parametrize(
    "path", ["/admin/keys", "/v1/feedback", "/v1/vectors/collections", "/v1/vectors/collections/c/search"]
)
async def test_every_route_bounds_its_body_with_413(client: httpx.AsyncClient, path: str) -> None:
    """Not only the inference routes: admin, feedback, vectors and any other body is refused past the limit."""
    huge = b'{"name": "' + b"x" * 5000 + b'"}'
    response = await client.post(path, content=huge, headers={"Content-Type": "application/json"})
    assert "x" * 50 not in str(assert_openai_error(response, 413, "invalid_request_error"))

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    assert_openai_error(await client.post(path, content=chunked()), 413, "invalid_request_error")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**CHAT, "seed": 2**70}),
        ("/v1/completions", {"model": "chat-a", "prompt": [1, 2, 2**70]}),
        ("/v1/embeddings", {"model": "emb", "input": "hi", "dimensions": 2**70}),
    ],
)
async def test_integers_past_64_bits_are_400_not_a_crash(
    client: httpx.AsyncClient, path: str, body: dict[str, object]
) -> None:
    # The standard library writes integers of any size (orjson, the gateway's encoder, refuses past 64 bits).
    response = await client.post(path, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    assert_openai_error(response, 400, "invalid_request_error")


async def test_a_trailing_slash_is_not_redirected_to_the_host_the_client_named(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models/", headers={"Host": "evil.example"})
    assert_openai_error(response, 404, "invalid_request_error")
    assert "location" not in response.headers


async def test_too_many_embedding_inputs_is_400(client: httpx.AsyncClient, tmp_path: Path) -> None:
    response = await client.post("/v1/embeddings", json={"model": "emb", "input": ["a"] * 300})
    assert response.status_code in (400, 413)


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.get("/v1/nothing-here"), 404, "invalid_request_error")
    assert_openai_error(await client.get("/v1/chat/completions"), 405, "invalid_request_error")


async def test_unreachable_model_server_is_503_naming_the_model(client: httpx.AsyncClient) -> None:
    error = assert_openai_error(await client.post("/v1/chat/completions", json=CHAT), 503, "service_unavailable")
    assert "chat-a" in str(error["message"]) and "127.0.0.1" not in str(error["message"])


def test_missing_admin_key_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from gateway.settings import Settings

    monkeypatch.delenv("CITADEL_ADMIN_KEY", raising=False)
    with pytest.raises(ValidationError, match="admin_key"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_a_plain_route_without_a_declared_permission_cannot_be_built() -> None:
    """The inference routes are plain Starlette routes (the hot path): deny by default holds for them too."""
    from starlette.responses import Response
    from starlette.routing import Route

    from gateway.app import assert_every_route_guarded

    async def forgotten(request: object) -> Response:
        return Response()

    with pytest.raises(RuntimeError, match="/forgotten declares no permission"):
        assert_every_route_guarded([Route("/forgotten", forgotten, methods=["POST"])])
