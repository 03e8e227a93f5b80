"""Relay a server-sent-event stream from vLLM to the client, chunk by chunk, without buffering the answer."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ..catalog import ModelSpec
from ..context import Answer, Usage
from ..errors import APIError, UpstreamError, UpstreamTimeout
from ..observability.health_metrics import count_upstream_error
from .failures import translate_errors
from .pool import Exchange

log = logging.getLogger(__name__)

DONE_EVENT = b"data: [DONE]\n\n"
EVENT_END = b"\n\n"
USAGE_MARK = b'"usage":{'


def error_event(error: APIError) -> bytes:
    """An SSE event carrying an OpenAI error; the OpenAI SDKs raise it to the caller."""
    return b"data: " + error.to_bytes() + EVENT_END


def _collect_content(block: bytes, answer: Answer) -> None:
    """Gather the streamed text and tool calls of the first choice (only for requests in a conversation session).

    Tool calls arrive as deltas keyed by `index`: the first carries the id and the function's name, the
    following ones pieces of the arguments' JSON text.
    """
    if answer.parts is None:
        answer.parts = []
    parts = answer.parts
    for event in block.split(EVENT_END):
        if event.startswith(b"data: {"):
            choices = orjson.loads(event[6:]).get("choices") or []
            if not choices or choices[0].get("index", 0) != 0:
                continue
            delta = choices[0].get("delta") or {}
            if delta.get("content"):
                parts.append(delta["content"])
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict) and isinstance(call.get("index"), int):
                    _collect_tool_call(call, answer.tool_calls)


def _collect_tool_call(delta: dict[str, Any], calls: dict[int, dict[str, Any]]) -> None:
    call = calls.setdefault(delta["index"], {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
    function = delta.get("function") or {}
    if delta.get("id"):
        call["id"] = delta["id"]
    if function.get("name"):
        call["function"]["name"] = function["name"]
    if isinstance(function.get("arguments"), str):
        call["function"]["arguments"] += function["arguments"]


def _take_usage(block: bytes, usage: Usage, *, forward_usage: bool) -> bytes:
    """Record the usage event's counts; drop that event if the client did not ask for usage."""
    kept = []
    for event in block.split(EVENT_END)[:-1]:
        if USAGE_MARK in event and event.startswith(b"data: {"):
            parsed = orjson.loads(event[6:])
            if isinstance(parsed.get("usage"), dict):
                usage.take(parsed["usage"])
                if not forward_usage and not parsed.get("choices"):
                    continue
        kept.append(event + EVENT_END)
    return b"".join(kept)


async def _chunks(exchange: Exchange) -> AsyncIterator[bytes]:
    """The first chunk (read before the client got anything, so it could still be retried), then the rest."""
    yield exchange.body
    async for chunk in exchange.response.content.iter_any():
        yield chunk


async def relay_stream(
    exchange: Exchange,
    *,
    spec: ModelSpec,
    requested_name: str,
    usage: Usage,
    forward_usage: bool,
    answer: Answer | None = None,
) -> AsyncIterator[bytes]:
    """Yield the upstream's events, renamed to the model the client asked for; fill `usage` from the end.

    The stream must end with `[DONE]`; if the upstream breaks or ends early, the client gets an error
    event instead of a silent truncation. Closing the response (also when the client goes away and
    this generator is cancelled) drops the upstream connection, which makes vLLM abort the request. The
    exchange is finished with the outcome, so the replica's breaker and in-flight count stay right.
    """
    response = exchange.response
    rename = spec.upstream_name != requested_name
    # vLLM writes compact JSON; a byte replace of the exact field avoids a JSON parse per chunk.
    needle = b'"model":' + orjson.dumps(spec.upstream_name)
    replacement = b'"model":' + orjson.dumps(requested_name)
    pending = b""
    complete = failed = False
    try:
        with translate_errors(spec):
            async for chunk in _chunks(exchange):
                # Only whole events go out, so a name or the usage split across chunks is still found.
                pending += chunk
                cut = pending.rfind(EVENT_END)
                if cut < 0:
                    continue
                block, pending = pending[: cut + 2], pending[cut + 2 :]
                if rename:
                    block = block.replace(needle, replacement)
                if USAGE_MARK in block:
                    block = _take_usage(block, usage, forward_usage=forward_usage)
                if answer is not None:
                    _collect_content(block, answer)
                complete = block.endswith(DONE_EVENT)
                if block:
                    yield block
            if not complete or pending.strip():
                complete = False
                raise UpstreamError(f"The model '{spec.name}' ended the stream before it was complete.")
    except APIError as error:
        failed = True
        count_upstream_error(spec.name, "timeout" if isinstance(error, UpstreamTimeout) else "broken")
        log.warning("stream from %s ended with an error: %s", spec.name, error.message)
        usage.error_type = error.error_type
        if answer is not None:
            answer.discard()  # an unfinished answer is not stored in the session
        yield error_event(error)
        yield DONE_EVENT
    finally:
        # close() (not release()) so an unfinished upstream request is cancelled, not drained.
        if not complete:
            response.close()
        else:
            response.release()
        # A client that left says nothing about the replica; a broken or truncated stream does.
        exchange.finish(ok=True if complete else (False if failed else None))
