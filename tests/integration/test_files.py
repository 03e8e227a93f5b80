"""/v1/files on an in-process gateway with a real PostgreSQL: the official openai SDK's round trip, pages, the size,
line and JSONL checks, per-key quotas, ownership (another key's 404, an admin's view of all) and the storage helpers
the batch runner uses."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import httpx2
import openai
import orjson
import pytest
import pytest_asyncio
from sqlalchemy import func, select

from gateway.auth import Principal, Role
from gateway.batch import files as store
from gateway.errors import DatabaseUnavailable, NotFound
from gateway.services import services_of
from gateway.store.batch_models import CHUNK_BYTES, FileChunk
from tests.integration.conftest import DbGateway, running_db_gateway
from tests.support.catalogs import ADMIN_KEY


def jsonl(count: int, *, pad: int = 0) -> bytes:
    """`count` batch request lines (each about `pad` bytes longer when asked)."""
    lines = (
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "ok", "x": "y" * pad}}
        for i in range(count)
    )
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


async def user_key(gw: DbGateway, **fields: object) -> str:
    return str((await gw.create_key(name=f"files-{uuid.uuid4().hex[:8]}", role="user", **fields))["key"])


async def upload(
    gw: DbGateway, key: str, data: bytes, *, purpose: str = "batch", filename: str = "in.jsonl"
) -> httpx.Response:
    return await gw.client.post(
        "/v1/files", files={"file": (filename, data)}, data={"purpose": purpose}, headers=gw.headers(key)
    )


def sdk(gw: DbGateway, key: str) -> openai.AsyncOpenAI:
    """The official SDK against the in-process app (its own HTTP client library, httpx2, over ASGI)."""
    transport = httpx2.ASGITransport(app=gw.app)
    http = httpx2.AsyncClient(transport=transport, base_url="http://gateway")
    return openai.AsyncOpenAI(base_url="http://gateway/v1", api_key=key, max_retries=0, http_client=http)


@pytest_asyncio.fixture
async def small(tmp_path: Path, postgres_url: str, fake_upstream_url: str) -> AsyncIterator[DbGateway]:
    """A gateway whose limits are small enough to pass in a test."""
    async with running_db_gateway(
        tmp_path,
        postgres_url,
        fake_upstream_url,
        batch_max_file_bytes=4000,
        batch_max_lines=5,
        batch_key_max_files=2,
        batch_key_max_bytes=3000,
    ) as gateway:
        yield gateway


async def test_the_openai_sdk_round_trip(db_gateway: DbGateway) -> None:
    key = await user_key(db_gateway)
    client = sdk(db_gateway, key)
    data = jsonl(3)
    created = await client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")
    assert created.id.startswith("file-") and len(created.id) == 5 + 24
    assert (created.object, created.purpose, created.status) == ("file", "batch", "processed")
    assert (created.bytes, created.filename) == (len(data), "requests.jsonl")
    retrieved = await client.files.retrieve(created.id)
    assert retrieved == created
    listed = [f async for f in client.files.list()]
    assert [f.id for f in listed] == [created.id]
    content = await client.files.content(created.id)
    assert content.content == data
    deleted = await client.files.delete(created.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (created.id, True, "file")
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        await client.files.delete(created.id)


async def test_list_pages_newest_first_with_a_cursor_and_filters(db_gateway: DbGateway) -> None:
    key = await user_key(db_gateway)
    ids = [(await upload(db_gateway, key, jsonl(1))).json()["id"] for _ in range(3)]

    async def page(**params: object) -> dict[str, object]:
        response = await db_gateway.client.get("/v1/files", params=params, headers=db_gateway.headers(key))
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    first = await page(limit=2)
    assert [f["id"] for f in first["data"]] == ids[:0:-1] and first["has_more"] is True  # type: ignore[index]
    assert (first["object"], first["first_id"], first["last_id"]) == ("list", ids[2], ids[1])
    rest = await page(limit=2, after=first["last_id"])
    assert [f["id"] for f in rest["data"]] == [ids[0]] and rest["has_more"] is False  # type: ignore[index]
    assert [f["id"] for f in (await page(order="asc"))["data"]] == ids  # type: ignore[index]
    assert (await page(purpose="batch_output"))["data"] == []
    for bad in ({"limit": 0}, {"limit": 10_001}, {"order": "sideways"}, {"after": "file-unknown"}):
        response = await db_gateway.client.get("/v1/files", params=bad, headers=db_gateway.headers(key))
        assert response.status_code == 400, (bad, response.text)


async def test_a_file_of_several_chunks_comes_back_byte_for_byte(db_gateway: DbGateway) -> None:
    key = await user_key(db_gateway)
    data = jsonl(40, pad=64 * 1024)  # about 2.5 MiB: three chunks
    created = await upload(db_gateway, key, data)
    assert created.status_code == 200, created.text
    file_id = created.json()["id"]
    response = await db_gateway.client.get(f"/v1/files/{file_id}/content", headers=db_gateway.headers(key))
    assert response.status_code == 200
    assert response.content == data and response.headers["content-type"] == "application/octet-stream"
    sessions = services_of(db_gateway.app).db_sessions
    assert sessions is not None
    async with sessions() as session:
        chunks = await session.scalar(select(func.count()).where(FileChunk.file_id == file_id))
    assert chunks == -(-len(data) // CHUNK_BYTES) == 3
    assert await store.read_file_bytes(sessions, file_id) == data


async def test_a_file_over_the_size_limit_is_413_and_nothing_is_kept(small: DbGateway) -> None:
    key = await user_key(small)
    over = jsonl(5, pad=800)
    assert 4000 < len(over) < 4000 + 64 * 1024  # past the file limit, within the form's allowance: the parser stops it
    response = await upload(small, key, over)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    far = await upload(small, key, b"x" * (200 * 1024))  # past the body bound itself: refused before it is read
    assert far.status_code == 413
    listed = await small.client.get("/v1/files", headers=small.headers(key))
    assert listed.json()["data"] == []


async def test_the_json_body_limit_does_not_bound_uploads(
    tmp_path: Path, postgres_url: str, fake_upstream_url: str
) -> None:
    async with running_db_gateway(tmp_path, postgres_url, fake_upstream_url, max_body_bytes=1024) as gw:
        key = await user_key(gw)
        response = await upload(gw, key, jsonl(20))  # about 1.7 KB: more than the JSON bodies' bound
        assert response.status_code == 200, response.text
        body = {"model": "ok", "messages": [{"role": "user", "content": "x" * 2000}]}
        chat = await gw.client.post("/v1/chat/completions", json=body, headers=gw.headers(key))
        assert chat.status_code == 413  # every other route keeps it


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"custom_id": "a"}\n[1, 2]\n', "Line 2 is not a JSON object"),
        (b'{"custom_id": "a"}\n\n{"secret-prompt": \n', "Line 3 is not valid JSON"),
        (b'{"custom_id": "a"}\n{"x": "\xff\xfe"}\n', "Line 2 is not valid JSON in UTF-8"),
        (b"\n  \n", "has no lines"),
        (jsonl(6), "more than this server's limit of 5 lines"),
    ],
)
async def test_a_malformed_batch_file_is_400_naming_the_line_not_its_content(
    small: DbGateway, data: bytes, message: str
) -> None:
    key = await user_key(small)
    response = await upload(small, key, data)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["param"] == "file"
    assert "secret-prompt" not in response.text


async def test_blank_lines_are_not_counted_and_a_byte_order_mark_is_allowed(small: DbGateway) -> None:
    key = await user_key(small)
    data = b"\xef\xbb\xbf" + jsonl(2) + b"\n\r\n" + jsonl(3)
    response = await upload(small, key, data)
    assert response.status_code == 200, response.text
    sessions = services_of(small.app).db_sessions
    record = await store.get_file(sessions, response.json()["id"], _principal(Role.ADMIN))
    assert record.lines == 5 and record.bytes == len(data)


@pytest.mark.parametrize(
    ("request_kwargs", "param"),
    [
        ({"files": {"file": ("a.jsonl", jsonl(1))}, "data": {"purpose": "fine-tune"}}, "purpose"),
        ({"files": {"file": ("a.jsonl", jsonl(1))}}, "purpose"),
        ({"data": {"purpose": "batch"}, "files": {"other": ("a.jsonl", jsonl(1))}}, "file"),
        ({"json": {"file": "x", "purpose": "batch"}}, None),
        (
            {
                "content": b"--b\r\nContent-Disposition: form-data; name=file\r\n\r\nno end",
                "headers": {"content-type": "multipart/form-data; boundary=b"},
            },
            None,
        ),
    ],
)
async def test_a_wrong_form_is_400(db_gateway: DbGateway, request_kwargs: dict[str, object], param: str | None) -> None:
    headers = {**db_gateway.headers(), **request_kwargs.pop("headers", {})}  # type: ignore[dict-item]
    response = await db_gateway.client.post("/v1/files", headers=headers, **request_kwargs)  # type: ignore[arg-type]
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_a_keys_quotas_bound_files_and_bytes_and_deleting_frees_room(small: DbGateway) -> None:
    key = await user_key(small)
    first = await upload(small, key, jsonl(5, pad=250))  # about 1.7 KB
    assert first.status_code == 200
    too_big = await upload(small, key, jsonl(5, pad=250))  # past 3000 bytes in all
    assert too_big.status_code == 403 and too_big.json()["error"]["type"] == "insufficient_quota"
    assert (await upload(small, key, jsonl(1))).status_code == 200
    third = await upload(small, key, jsonl(1))  # past 2 files
    assert third.status_code == 403 and third.json()["error"]["code"] == "quota_exceeded"
    assert "2" in third.json()["error"]["message"]
    await small.client.delete(f"/v1/files/{first.json()['id']}", headers=small.headers(key))
    assert (await upload(small, key, jsonl(1))).status_code == 200
    other = await user_key(small)  # the quota is per key
    assert (await upload(small, other, jsonl(1))).status_code == 200
    for _ in range(3):  # admins are not bounded
        assert (await upload(small, ADMIN_KEY, jsonl(1))).status_code == 200


async def test_another_keys_file_is_404_everywhere_and_an_admin_sees_all(db_gateway: DbGateway) -> None:
    owner, stranger = await user_key(db_gateway), await user_key(db_gateway)
    file_id = (await upload(db_gateway, owner, jsonl(1))).json()["id"]
    for method, path in (
        ("GET", f"/v1/files/{file_id}"),
        ("GET", f"/v1/files/{file_id}/content"),
        ("DELETE", f"/v1/files/{file_id}"),
    ):
        response = await db_gateway.client.request(method, path, headers=db_gateway.headers(stranger))
        assert response.status_code == 404, (method, path)
        unknown = await db_gateway.client.request(
            method, path.replace(file_id, "file-" + "0" * 24), headers=db_gateway.headers(stranger)
        )
        assert unknown.json()["error"]["message"].replace("0" * 24, "") == response.json()["error"]["message"].replace(
            file_id[5:], ""
        )  # the same answer as for an id that does not exist
    listed = await db_gateway.client.get("/v1/files", headers=db_gateway.headers(stranger))
    assert file_id not in {f["id"] for f in listed.json()["data"]}
    cursor = await db_gateway.client.get("/v1/files", params={"after": file_id}, headers=db_gateway.headers(stranger))
    assert cursor.status_code == 400  # another key's id is no cursor either
    admin_list = await db_gateway.client.get("/v1/files", headers=db_gateway.headers())
    assert file_id in {f["id"] for f in admin_list.json()["data"]}
    assert (
        await db_gateway.client.get(f"/v1/files/{file_id}/content", headers=db_gateway.headers())
    ).status_code == 200
    deleted = await db_gateway.client.delete(f"/v1/files/{file_id}", headers=db_gateway.headers())
    assert deleted.json() == {"id": file_id, "object": "file", "deleted": True}
    gone = await db_gateway.client.get(f"/v1/files/{file_id}", headers=db_gateway.headers(owner))
    assert gone.status_code == 404


async def test_a_key_without_inference_may_not_use_files(db_gateway: DbGateway) -> None:
    viewer = str((await db_gateway.create_key(name=f"files-viewer-{uuid.uuid4().hex[:6]}", role="viewer"))["key"])
    assert (await upload(db_gateway, viewer, jsonl(1))).status_code == 403
    assert (await db_gateway.client.get("/v1/files", headers=db_gateway.headers(viewer))).status_code == 403
    assert (await db_gateway.client.get("/v1/files")).status_code == 401


def _principal(role: Role) -> Principal:
    return Principal(key_id=uuid.uuid4(), name="t", role=role)


async def test_the_runners_helpers_store_output_files_outside_the_quota(small: DbGateway) -> None:
    sessions = services_of(small.app).db_sessions
    owner = _principal(Role.USER)
    data = b'{"id": "batch_req_1", "custom_id": "a"}\n' * 3
    record = await store.store_file(
        sessions, key_id=owner.key_id, purpose="batch_output", filename="out.jsonl", data=data
    )
    assert (record.purpose, record.bytes, record.lines, record.key_id) == ("batch_output", len(data), 3, owner.key_id)
    assert await store.get_file(sessions, record.id, owner) == record
    assert await store.read_file_bytes(sessions, record.id) == data
    with pytest.raises(NotFound):
        await store.get_file(sessions, record.id, _principal(Role.USER))
    with pytest.raises(NotFound):
        await store.read_file_bytes(sessions, "file-" + "f" * 24)
    empty = await store.store_file(sessions, key_id=owner.key_id, purpose="batch_output", filename="e.jsonl", data=b"")
    assert await store.read_file_bytes(sessions, empty.id) == b""
    with pytest.raises(DatabaseUnavailable):
        await store.get_file(None, record.id, owner)


async def test_a_client_hanging_up_mid_upload_stores_nothing(db_gateway: DbGateway) -> None:
    key = await user_key(db_gateway)
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n' + jsonl(2)
    messages = iter([{"type": "http.request", "body": head, "more_body": True}, {"type": "http.disconnect"}])
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return next(messages)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    headers = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"multipart/form-data; boundary=b")]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/files",
        "raw_path": b"/v1/files",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("gateway", 80),
    }
    await db_gateway.app(scope, receive, send)
    assert sent[0]["status"] == 499
    listed = await db_gateway.client.get("/v1/files", headers=db_gateway.headers(key))
    assert listed.json()["data"] == []
