"""RequestContext: what one request carries from the outermost ASGI layer to its audit row, metrics and log line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.types import Scope

if TYPE_CHECKING:  # auth reads the context: a run-time import would be circular
    from .admission.gate import Ticket
    from .auth import Principal

# The scope key of the request's context (its own key: Starlette's `scope["state"]` dict is not used).
CONTEXT_KEY = "citadel.context"


@dataclass(slots=True)
class Usage:
    """The tokens the model server reported (None: not known, e.g. the request failed before the answer)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    error_type: str | None = None  # a stream that broke after its first byte (its status was already 200)

    def take(self, reported: dict[str, Any]) -> None:
        """Note an OpenAI `usage` object as the model server sent it."""
        self.prompt_tokens = _count(reported.get("prompt_tokens"))
        self.completion_tokens = _count(reported.get("completion_tokens"))
        self.total_tokens = _count(reported.get("total_tokens"))

    @property
    def used(self) -> int:
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(slots=True)
class Answer:
    """The assistant's reply, gathered for a conversation session: whole (JSON) or piece by piece (a stream)."""

    parts: list[str] | None = None  # None until some of the answer arrived (or after the stream failed)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)  # by the call's index

    def whole(self, message: dict[str, Any]) -> None:
        self.parts = [message.get("content") or ""]
        calls = message.get("tool_calls") or []
        self.tool_calls = dict(enumerate(calls))

    def discard(self) -> None:
        """An unfinished answer is not stored in the session."""
        self.parts = None
        self.tool_calls = {}

    def reply(self) -> dict[str, Any] | None:
        """The message to store, None when the request failed."""
        if self.parts is None:
            return None
        reply: dict[str, Any] = {"role": "assistant", "content": "".join(self.parts)}
        if self.tool_calls:
            # Kept with the reply, so the session's next turn can answer the calls with `tool` messages.
            reply["tool_calls"] = [call for _, call in sorted(self.tool_calls.items())]
        return reply


@dataclass(slots=True)
class RequestContext:
    """One request, written by the layers and the pipeline as it goes; read once it is over (audit, metrics, log).

    Created by the outermost layer (gateway/middleware.py RequestLayer) and kept in the scope under CONTEXT_KEY.
    """

    request_id: str
    started: float  # time.perf_counter() when the request arrived
    principal: Principal | None = None  # the authentication layer
    model: str | None = None  # the model the client asked for (the pipeline)
    endpoint: str | None = None  # "chat", "completions", "embeddings" for inference requests
    stream: bool = False
    first_byte: float | None = None  # perf_counter() of the first body byte sent
    status: int = 500  # if the app fails before answering
    usage: Usage = field(default_factory=Usage)
    cache_hit: bool | None = None  # None: the cache was not asked
    retries: int = 0  # how many times the request was sent upstream again
    answer: Answer | None = None  # gathered only for conversation sessions
    error_type: str | None = None
    rate_limited_by: str | None = None  # which limit refused (a 429)
    priority: str | None = None  # the admission class it ran in (inference requests)
    queue_wait_s: float | None = None  # how long it waited at the gateway for a model server slot
    # Its admission slot: released when the answer is over (the pipeline; the request layer once more at the very
    # end, for an answer whose client left before it started).
    ticket: Ticket | None = None

    def ttft_s(self) -> float | None:
        """Time to the first byte of a stream; None for other answers."""
        if self.first_byte is None or not self.stream:
            return None
        return self.first_byte - self.started


def context_of(scope: Scope) -> RequestContext:
    """The request's context (every HTTP request has one: the outermost layer made it)."""
    ctx: RequestContext = scope[CONTEXT_KEY]
    return ctx


def note_error(scope: Scope, error_type: str) -> None:
    """Record an error's type for the audit row; a no-op outside the request layer (nothing to record it in)."""
    ctx: RequestContext | None = scope.get(CONTEXT_KEY)
    if ctx is not None:
        ctx.error_type = error_type
