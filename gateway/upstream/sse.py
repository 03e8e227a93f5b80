"""Relay a server-sent-event stream from vLLM to the client, chunk by chunk, without buffering the answer."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import orjson

from ..catalog import ModelSpec
from ..errors import APIError, UpstreamError
from .pool import translate_errors

log = logging.getLogger(__name__)

DONE_EVENT = b"data: [DONE]\n\n"
EVENT_END = b"\n\n"


def error_event(error: APIError) -> bytes:
    """An SSE event carrying an OpenAI error; the OpenAI SDKs raise it to the caller."""
    return b"data: " + error.to_bytes() + EVENT_END


async def relay_stream(
    response: aiohttp.ClientResponse, *, spec: ModelSpec, requested_name: str
) -> AsyncIterator[bytes]:
    """Yield the upstream's events, renamed to the model the client asked for.

    The stream must end with `[DONE]`; if the upstream breaks or ends early, the client gets an error
    event instead of a silent truncation. Closing the response (also when the client goes away and
    this generator is cancelled) drops the upstream connection, which makes vLLM abort the request.
    """
    rename = spec.upstream_name != requested_name
    # vLLM writes compact JSON; a byte replace of the exact field avoids a JSON parse per chunk.
    needle = b'"model":' + orjson.dumps(spec.upstream_name)
    replacement = b'"model":' + orjson.dumps(requested_name)
    pending = b""
    tail = b""
    complete = False
    try:
        with translate_errors(spec):
            async for chunk in response.content.iter_any():
                if rename:
                    # Only whole events are rewritten, so a name split across chunks is still found.
                    pending += chunk
                    cut = pending.rfind(EVENT_END)
                    if cut < 0:
                        continue
                    chunk, pending = pending[: cut + 2], pending[cut + 2 :]
                    chunk = chunk.replace(needle, replacement)
                tail = (tail + chunk)[-len(DONE_EVENT) :]
                yield chunk
            complete = tail == DONE_EVENT and not pending.strip()
            if not complete:
                raise UpstreamError(f"The model '{spec.name}' ended the stream before it was complete.")
    except APIError as error:
        log.warning("stream from %s ended with an error: %s", spec.name, error.message)
        yield error_event(error)
        yield DONE_EVENT
    finally:
        # close() (not release()) so an unfinished upstream request is cancelled, not drained.
        if not complete:
            response.close()
        else:
            response.release()
