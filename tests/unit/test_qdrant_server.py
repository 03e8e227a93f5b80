"""The gateway against a Qdrant *server* (QDRANT_URL), played by a local stand-in that answers what a real one
answers, including its refusals: each becomes the API error a client can act on (404, 409, 400, 503), never a
500, never the server's address; and collections made on a server get their owner tag indexed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from gateway.errors import CollectionExists, InvalidRequest, NotFound, VectorStoreUnavailable
from gateway.observability.metrics import QDRANT_FAILURES
from gateway.vectors.store import QdrantStore
from tests.conftest import make_settings
from tests.support.ports import free_port

# The stand-in speaks plain HTTP on the loopback; a real deployment's QDRANT_URL is https or a private network.
pytestmark = pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")


def _ok(result: object) -> web.Response:
    return web.json_response({"result": result, "status": "ok", "time": 0.0})


@dataclass
class StandIn:
    """A Qdrant REST server with no collections; `refuse` maps a path prefix to the status it answers there."""

    url: str = ""
    requests: list[tuple[str, str]] = field(default_factory=list)
    refuse: dict[str, int] = field(default_factory=dict)
    api_key_seen: list[str | None] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path))
        self.api_key_seen.append(request.headers.get("api-key"))
        for prefix, status in self.refuse.items():
            if request.path.startswith(prefix):
                body = {"status": {"error": f"refused by the stand-in ({status})"}, "time": 0.0}
                return web.json_response(body, status=status)
        path = request.path
        if path == "/collections" and request.method == "GET":
            return _ok({"collections": []})
        if path.endswith("/exists"):
            return _ok({"exists": False})
        if request.method == "PUT" and path.count("/") == 2:  # PUT /collections/{name}
            return _ok(True)
        if path.endswith("/index") or path.endswith("/points"):
            if request.method == "POST":  # retrieve by ids: nothing stored
                return _ok([])
            return _ok({"operation_id": 1, "status": "completed"})
        return web.json_response({"status": {"error": "not found"}, "time": 0.0}, status=404)


@pytest.fixture
async def qdrant() -> AsyncIterator[StandIn]:
    stand_in = StandIn()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stand_in.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stand_in.url = f"http://127.0.0.1:{port}"
    try:
        yield stand_in
    finally:
        await runner.cleanup()


def _store(tmp_path: Path, url: str) -> QdrantStore:
    models = tmp_path / "models.yaml"
    models.write_text("models: {}\n")
    return QdrantStore.open(make_settings(models, qdrant_url=url, qdrant_api_key="qdrant-secret", qdrant_timeout_s=2))


async def test_a_collection_on_a_server_is_created_indexed_and_registered(qdrant: StandIn, tmp_path: Path) -> None:
    store = _store(tmp_path, qdrant.url)
    try:
        await store.ping()
        info = await store.create(name="notes", model="embed", dimensions=4, distance="cosine", owner="key-1")
    finally:
        await store.close()
    assert info.name == "notes" and info.owner == "key-1"
    physical = f"/collections/{store.physical('notes')}"
    assert ("PUT", physical) in qdrant.requests
    # Every query filters on the owner: a server gets an index on it (the embedded mode has none).
    assert ("PUT", f"{physical}/index") in qdrant.requests
    assert ("PUT", f"/collections/{store.registry}/points") in qdrant.requests
    assert set(qdrant.api_key_seen) == {"qdrant-secret"}


@pytest.mark.parametrize(
    ("status", "error", "http"),
    [(404, NotFound, 404), (409, CollectionExists, 409), (400, InvalidRequest, 400), (422, InvalidRequest, 400)],
)
async def test_a_servers_refusal_becomes_the_matching_client_error(
    qdrant: StandIn, tmp_path: Path, status: int, error: type[Exception], http: int
) -> None:
    store = _store(tmp_path, qdrant.url)
    qdrant.refuse["/collections/citadel_notes"] = status
    try:
        with pytest.raises(error) as raised:
            await store.count("notes", scope=None)  # type: ignore[arg-type]
    finally:
        await store.close()
    assert raised.value.status_code == http  # type: ignore[attr-defined]
    assert qdrant.url not in str(raised.value) and "stand-in" not in str(raised.value)


@pytest.mark.parametrize("status", [401, 403, 500])
async def test_a_server_that_refuses_the_key_or_fails_is_a_503_and_counted(
    qdrant: StandIn, tmp_path: Path, status: int
) -> None:
    store = _store(tmp_path, qdrant.url)
    qdrant.refuse["/collections"] = status
    before = QDRANT_FAILURES.labels(operation="request")._value.get()
    try:
        with pytest.raises(VectorStoreUnavailable) as raised:
            await store.ping()
    finally:
        await store.close()
    assert raised.value.status_code == 503
    assert qdrant.url not in str(raised.value)
    assert QDRANT_FAILURES.labels(operation="request")._value.get() == before + 1


async def test_a_server_that_is_not_there_is_a_503(tmp_path: Path) -> None:
    store = _store(tmp_path, f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(VectorStoreUnavailable):
            await store.ping()
        with pytest.raises(VectorStoreUnavailable):
            await store.get_info("notes")
    finally:
        await store.close()
