"""Every request leaves exactly one audit row: authenticated or not, well-formed or not, whatever its path,
headers or body. Sent over real sockets to a real gateway process with its own PostgreSQL database; the
rows are counted after the gateway's graceful stop (which flushes the audit log).

Not counted, by design: the unaudited paths (liveness, readiness, metrics, the status page), and bytes that
are not HTTP at all (uvicorn answers those 400 itself, before any application code runs).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support import processes
from tests.support.catalogs import ADMIN_KEY, chat_entry
from tests.support.gateway import GatewayProcess, gateway_env, start_gateway
from tests.support.postgres import fresh_database

CHAT = b'{"model": "ok", "messages": [{"role": "user", "content": "hi"}]}'


def raw_request(url: str, request: bytes) -> bytes:
    """Send bytes as they are (no client library normalises them) and read the whole answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def nasty_requests(user_key: str) -> list[bytes]:
    """Requests a client library would refuse to send or would clean up first; each is one HTTP request."""
    admin = f"Authorization: Bearer {ADMIN_KEY}\r\n".encode()
    user = f"Authorization: Bearer {user_key}\r\n".encode()
    close = b"Connection: close\r\nHost: gateway\r\n"

    def get(path: bytes, headers: bytes = b"") -> bytes:
        return b"GET " + path + b" HTTP/1.1\r\n" + close + headers + b"\r\n"

    def post(path: bytes, body: bytes, headers: bytes = b"") -> bytes:
        length = f"Content-Length: {len(body)}\r\n".encode()
        return b"POST " + path + b" HTTP/1.1\r\n" + close + length + headers + b"\r\n" + body

    return [
        get(b"/v1/models/%00"),  # a NUL in the path: kept (as U+FFFD), not dropped
        get(b"/%00%00/../..%2f..%2fetc/passwd", admin),
        get(b"/v1/models/" + b"a" * 6000, user),
        get(b"/v1/models/%ff%fe%ed%a0%80", user),  # not UTF-8 once decoded
        get(b"//v1//models", user),
        get(b"/v1/models?" + b"x=%00&" * 500, user),
        get(b"/v1/models", b"Authorization: Bearer \r\n"),
        get(b"/v1/models", b"Authorization: Bearer ck_" + b"A" * 900 + b"\r\n"),
        get(b"/v1/models", b"Authorization: Basic dXNlcjpwYXNz\r\n"),
        get(b"/v1/models", b"Authorization: Bearer \xff\xfe\r\n"),
        get(b"/v1/models", user + b"X-Request-ID: ../../\xff<script>\r\n"),
        get(b"/v1/models", user + b"X-Forwarded-For: 1.2.3.4, \xff, not-an-ip\r\n"),
        get(b"/v1/sessions/not-a-uuid", user),
        get(b"/admin/audit?model=%00&since=0001-01-01T00:00:00Z", admin),
        get(b"/admin/keys", user),  # a user on an admin route: 403
        b"PROPFIND /v1/models HTTP/1.1\r\n" + close + user + b"\r\n",
        b"DELETE /v1/chat/completions HTTP/1.1\r\n" + close + user + b"\r\n",
        post(b"/v1/chat/completions", CHAT.replace(b'"hi"', b"NaN"), user + b"Content-Type: application/json\r\n"),
        post(b"/v1/chat/completions", b"\xff\xfe{", user + b"Content-Type: text/plain\r\n"),
        post(b"/v1/chat/completions", CHAT.replace(b'"ok"', b'"ok\\u0000"'), user),
        post(b"/v1/chat/completions", b"[" * 10_000, user),
        post(b"/v1/embeddings", b'{"model": "ok", "input": "x", "dimensions": ' + b"9" * 30 + b"}", user),
        post(b"/v1/feedback", b'{"request_id": "a\\u0000b", "rating": "up", "comment": "\\u0000"}', user),
        post(b"/admin/keys", b'{"name": "n\\u0000", "expires_at": "2030-01-01T00:00:00"}', admin),
        # Declares more than CITADEL_MAX_BODY_BYTES: 413 at once, before the body is read.
        b"POST /v1/chat/completions HTTP/1.1\r\n" + close + user + b"Content-Length: 2000000\r\n\r\n{",
        (
            b"POST /v1/chat/completions HTTP/1.1\r\n" + close + user + b"Transfer-Encoding: chunked\r\n\r\n"
            b'5\r\n{"mod\r\n0\r\n\r\n'
        ),
    ]


def not_http(user_key: str) -> list[bytes]:
    """Bytes uvicorn's HTTP parser refuses (400 "Invalid HTTP request received."): no request reaches the app."""
    user = f"Authorization: Bearer {user_key}\r\n".encode()
    return [
        b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n" + user + b"X-Session-ID: \x7f\r\n\r\n",
        b"GET /v1/models\x00 HTTP/1.1\r\nHost: gateway\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello to a plain HTTP port\r\n\r\n",
    ]


@pytest.fixture
async def audited_gateway(tmp_path: Path, postgres_url: str, fake_upstream_url: str) -> AsyncIterator[tuple[str, str]]:
    async with fresh_database(postgres_url, prefix="auditall") as db_url:
        env = gateway_env(
            tmp_path, {"ok": chat_entry(fake_upstream_url)}, DATABASE_URL=db_url, CITADEL_AUDIT_FLUSH_INTERVAL_S="0.05"
        )
        gateway: GatewayProcess = start_gateway(tmp_path, env)
        try:
            yield gateway.url, db_url
        finally:
            processes.stop(gateway.process)


async def audit_rows(db_url: str) -> list[tuple[str, int, str | None]]:
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            found = await conn.execute(
                text("SELECT endpoint, status, request_id FROM llm.audit_log WHERE kind = 'api'")
            )
            return [(row[0], row[1], row[2]) for row in found]
    finally:
        await engine.dispose()


async def test_every_request_leaves_exactly_one_row(
    audited_gateway: tuple[str, str], tmp_path: Path, postgres_url: str
) -> None:
    url, db_url = audited_gateway
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        created = await client.post(
            "/admin/keys", json={"name": "u", "role": "user"}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        assert created.status_code == 201, created.text
        user_key = created.json()["key"]
        sent = 1
        statuses = []
        for request in nasty_requests(user_key):
            answer = await asyncio.to_thread(raw_request, url, request)
            status = int(answer.split(b" ", 2)[1])
            statuses.append(status)
            assert status < 500, answer[:500]
            sent += 1
        # Unaudited by design: these add no rows.
        assert (await client.get("/health")).status_code == 200
        for request in not_http(user_key):
            answer = await asyncio.to_thread(raw_request, url, request)
            assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert 413 in statuses and 404 in statuses and 401 in statuses and 403 in statuses and 405 in statuses

    # The writer flushes every 50 ms here; wait for the rows rather than for a fixed time.
    rows: list[tuple[str, int, str | None]] = []
    for _ in range(100):
        rows = await audit_rows(db_url)
        if len(rows) >= sent:
            break
        await asyncio.sleep(0.1)
    assert len(rows) == sent, f"{len(rows)} audit rows for {sent} requests: {rows} {statuses}"
    assert sorted(status for _, status, _ in rows) == sorted([201, *statuses])
    assert any("\ufffd" in endpoint for endpoint, _, _ in rows)  # the NUL path, visibly marked
    assert all(len(endpoint) <= 128 for endpoint, _, _ in rows)
    assert all(request_id and "<" not in request_id for _, _, request_id in rows)
