"""Conversation sessions: history prepended, turns stored after the answer (streams too), ownership, trimming."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from tests.integration.conftest import DbGateway


async def session_chat(gw: DbGateway, key: str, session_id: str, content: str, **extra: object) -> httpx.Response:
    body = {"model": "ok", "messages": [{"role": "user", "content": content}], **extra}
    return await gw.client.post(
        "/v1/chat/completions", json=body, headers=gw.headers(key, **{"X-Session-ID": session_id})
    )


async def stored(gw: DbGateway, key: str, session_id: str, count: int) -> list[dict[str, object]]:
    for _ in range(100):
        response = await gw.client.get(f"/v1/sessions/{session_id}", headers=gw.headers(key))
        if response.status_code == 200 and response.json()["message_count"] >= count:
            return response.json()["messages"]  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    raise AssertionError(f"session {session_id} did not reach {count} messages")


async def upstream_messages(gw: DbGateway) -> list[dict[str, object]]:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{gw.upstream_url}/_last")).json()["payload"]["messages"]  # type: ignore[no-any-return]


async def test_history_is_prepended_and_turns_are_stored(db_gateway: DbGateway) -> None:
    key = str((await db_gateway.create_key(name="sessions", role="user"))["key"])
    session_id = str(uuid.uuid4())
    assert (await session_chat(db_gateway, key, session_id, "first")).status_code == 200
    assert await stored(db_gateway, key, session_id, 2) == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "hello from the fake"},
    ]
    assert (await session_chat(db_gateway, key, session_id, "second", stream=True)).status_code == 200
    sent = await upstream_messages(db_gateway)
    assert [m["content"] for m in sent] == ["first", "hello from the fake", "second"]
    history = await stored(db_gateway, key, session_id, 4)
    assert history[-1] == {"role": "assistant", "content": "hello world"}  # the streamed reply, joined
    listing = (await db_gateway.client.get("/v1/sessions", headers=db_gateway.headers(key))).json()
    assert [(s["id"], s["message_count"]) for s in listing["data"]] == [(session_id, 4)]


async def test_another_key_cannot_see_or_use_a_session(db_gateway: DbGateway) -> None:
    owner = str((await db_gateway.create_key(name="owner", role="user"))["key"])
    other = str((await db_gateway.create_key(name="other", role="user"))["key"])
    session_id = str(uuid.uuid4())
    await session_chat(db_gateway, owner, session_id, "mine")
    await stored(db_gateway, owner, session_id, 2)
    assert (
        await db_gateway.client.get(f"/v1/sessions/{session_id}", headers=db_gateway.headers(other))
    ).status_code == 404
    assert (await session_chat(db_gateway, other, session_id, "let me in")).status_code == 404
    assert (
        await db_gateway.client.delete(f"/v1/sessions/{session_id}", headers=db_gateway.headers(other))
    ).status_code == 404
    # Admins see every session.
    assert (await db_gateway.client.get(f"/v1/sessions/{session_id}", headers=db_gateway.headers())).status_code == 200


async def test_delete_and_bad_ids(db_gateway: DbGateway) -> None:
    key = str((await db_gateway.create_key(name="deleter", role="user"))["key"])
    session_id = str(uuid.uuid4())
    await session_chat(db_gateway, key, session_id, "bye")
    await stored(db_gateway, key, session_id, 2)
    deleted = await db_gateway.client.delete(f"/v1/sessions/{session_id}", headers=db_gateway.headers(key))
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert (
        await db_gateway.client.get(f"/v1/sessions/{session_id}", headers=db_gateway.headers(key))
    ).status_code == 404
    assert (await session_chat(db_gateway, key, "not-a-uuid", "x")).status_code == 400
    assert (await db_gateway.client.get("/v1/sessions/not-a-uuid", headers=db_gateway.headers(key))).status_code == 400


async def test_stored_history_is_trimmed_to_the_context(db_gateway: DbGateway) -> None:
    key = str((await db_gateway.create_key(name="trim", role="user"))["key"])
    session_id = str(uuid.uuid4())
    headers = db_gateway.headers(key, **{"X-Session-ID": session_id})
    long_turn = "word " * 40  # ~50 estimated tokens; the "tiny" model has a 64-token context
    for turn in range(3):
        body = {"model": "tiny", "messages": [{"role": "user", "content": f"{turn} {long_turn}"}], "max_tokens": 8}
        assert (await db_gateway.client.post("/v1/chat/completions", json=body, headers=headers)).status_code == 200
        await stored(db_gateway, key, session_id, 2 * (turn + 1))
    sent = await upstream_messages(db_gateway)
    # Only what fits was sent: the newest turn, and not the whole stored history.
    assert sent[-1]["content"].startswith("2 ")
    assert len(sent) < 5
