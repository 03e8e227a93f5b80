"""The SSE relay: renaming survives arbitrary chunk boundaries; an early end becomes an error event."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from gateway.catalog import ModelSpec
from gateway.context import Usage
from gateway.upstream.breaker import BreakerState, CircuitBreaker
from gateway.upstream.pool import Exchange
from gateway.upstream.replica import Replica
from gateway.upstream.sse import DONE_EVENT, relay_stream
from tests.support.catalogs import chat_entry


class FakeContent:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


class FakeResponse:
    """Just what relay_stream touches of aiohttp's ClientResponse."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.content = FakeContent(chunks)
        self.closed = False
        self.released = False

    def close(self) -> None:
        self.closed = True

    def release(self) -> None:
        self.released = True


def event(model: str, text: str) -> bytes:
    return b"data: " + orjson.dumps({"model": model, "choices": [{"delta": {"content": text}}]}) + b"\n\n"


def spec(upstream: str) -> ModelSpec:
    return ModelSpec(name="public", **{k: v for k, v in chat_entry("http://x", upstream_model=upstream).items()})


async def relay(
    chunks: list[bytes], upstream: str, *, usage: Usage | None = None, forward_usage: bool = False
) -> tuple[bytes, FakeResponse]:
    response = FakeResponse(chunks)
    exchange = Exchange(response, replica(), body=b"")  # type: ignore[arg-type]
    stream = relay_stream(
        exchange,
        spec=spec(upstream),
        requested_name="public",
        usage=Usage() if usage is None else usage,
        forward_usage=forward_usage,
    )
    body = b"".join([chunk async for chunk in stream])
    assert exchange.replica.outstanding == 0, "the replica's in-flight count drops when the stream ends"
    response.breaker_state = exchange.replica.breaker.state  # type: ignore[attr-defined]
    return body, response


def replica() -> Replica:
    """A replica with one request in flight and a breaker that opens on the first failure."""
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=60, max_cooldown_s=60)
    return Replica(url="http://x:1", models=["public"], breaker=breaker, outstanding=1)


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
async def test_rename_survives_any_chunk_boundary(size: int) -> None:
    whole = event("served", "a") + event("served", "b") + DONE_EVENT
    out, response = await relay([whole[i : i + size] for i in range(0, len(whole), size)], "served")
    assert out == event("public", "a") + event("public", "b") + DONE_EVENT
    assert response.released and not response.closed
    assert response.breaker_state is BreakerState.CLOSED  # type: ignore[attr-defined]


async def test_same_name_passes_bytes_through() -> None:
    whole = event("public", "a") + DONE_EVENT
    out, _ = await relay([whole[:5], whole[5:]], "public")
    assert out == whole


@pytest.mark.parametrize("ending", [b"", b"data: [DO"])
async def test_early_end_becomes_an_error_event_and_closes_upstream(ending: bytes) -> None:
    out, response = await relay([event("served", "a") + ending], "served")
    events = out.split(b"\n\n")
    assert events[0] == event("public", "a").rstrip()
    assert b'"error"' in events[1] and events[2] == b"data: [DONE]"
    assert response.closed
    # A truncated stream is the replica's failure: its breaker hears of it.
    assert response.breaker_state is BreakerState.OPEN  # type: ignore[attr-defined]


USAGE = b'data: {"model":"served","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}\n\n'


@pytest.mark.parametrize("forward_usage", [False, True])
async def test_usage_is_recorded_and_shown_only_when_asked(forward_usage: bool) -> None:
    usage = Usage()
    whole = event("served", "a") + USAGE + DONE_EVENT
    out, _ = await relay([whole[:20], whole[20:]], "served", usage=usage, forward_usage=forward_usage)
    assert usage == Usage(prompt_tokens=7, completion_tokens=3)
    assert (b'"usage":{' in out) is forward_usage
    assert out.endswith(DONE_EVENT)
