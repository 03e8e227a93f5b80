"""The serving layer for the OpenAI endpoints: validate and clamp a request, forward it, relay the answer.

Routes stay wiring only; everything a request goes through between authentication and the model server
lives here, so a later concern (limits, cache, audit) has one obvious place to plug in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from starlette.responses import Response, StreamingResponse

from .admission.gates import Admission
from .admission.priority import Priority
from .aliases import AliasChoice, alias_allowed, choose_target, fits_context, target_allowed
from .auth import Principal
from .catalog import AliasSpec, Catalog, ModelSpec
from .context import Answer, RequestContext, Usage
from .conversations import DEFAULT_ANSWER_TOKENS, trim_history
from .errors import InvalidRequest, ModelNotFound, ModelSaturated, PermissionDenied, UpstreamError
from .observability.health_metrics import count_upstream_error
from .protocol.chat import ChatCompletionRequest
from .protocol.common import encode_for_upstream, parse_request
from .protocol.completions import CompletionRequest
from .protocol.embeddings import EmbeddingRequest
from .protocol.tools import NamedToolChoice, tools_problem
from .settings import Settings
from .upstream.pool import UpstreamPool
from .upstream.sse import relay_stream

Endpoint = Literal["chat", "completions", "embeddings"]

INFERENCE_PATHS: dict[Endpoint, str] = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}
_KIND_FOR: dict[Endpoint, str] = {"chat": "chat", "completions": "chat", "embeddings": "embedding"}
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


_REQUEST_MODELS: dict[Endpoint, type[ChatCompletionRequest | CompletionRequest | EmbeddingRequest]] = {
    "chat": ChatCompletionRequest,
    "completions": CompletionRequest,
    "embeddings": EmbeddingRequest,
}


@dataclass(slots=True)
class Parsed:
    """A request body validated once; every later step (history, retrieval) reads this, never the body."""

    endpoint: Endpoint
    request: ChatCompletionRequest | CompletionRequest | EmbeddingRequest


@dataclass(slots=True)
class Prepared:
    """A validated request, ready for the model server."""

    endpoint: Endpoint
    spec: ModelSpec
    requested_name: str
    payload: bytes
    stream: bool
    # Upstream streams always report usage (for the audit log); the client sees it only if it asked.
    client_wants_usage: bool = False
    # The messages this request added to a conversation session (stored after the answer).
    new_messages: list[dict[str, Any]] = field(default_factory=list)
    # The most tokens the answer can cost (completion_budget), for the up-front charge of the token limit.
    completion_budget: int = 0
    # Whether the answer is reproducible (embeddings, a seed, temperature 0): the cache may serve it. None: not
    # known here (cache.decide() reads it from the payload then).
    deterministic: bool | None = None
    # A request to an alias: the target picked and the targets passed over (None: a model was asked by name).
    alias: AliasChoice | None = None


def completion_budget(data: dict[str, Any], spec: ModelSpec, endpoint: Endpoint) -> int:
    """The most tokens a request's answer can cost, charged up front and settled to the real usage afterwards:
    per choice the `max_tokens` asked for or, when unset, all the model server may write (the rest of its context:
    a model's `max_tokens` bounds what may be asked, and vLLM writes up to the context when nothing is); times the
    choices (`n`, `best_of`) and the prompts of a list. Embeddings generate nothing."""
    if endpoint == "embeddings":
        return 0
    per_choice = data.get("max_completion_tokens") or data.get("max_tokens") or spec.max_model_len
    choices = max(data.get("n") or 1, data.get("best_of") or 1)
    prompt = data.get("prompt")
    prompts = len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1
    return int(per_choice) * int(choices) * prompts


def _deterministic(data: dict[str, Any], endpoint: Endpoint) -> bool:
    """The cache's test (cache.decide) on the dict the payload is made of, so the payload is not parsed again."""
    if endpoint == "embeddings" or data.get("seed") is not None:
        return True
    temperature = data.get("temperature")
    return temperature is not None and float(temperature) == 0.0


def model_not_allowed(name: str) -> PermissionDenied:
    return PermissionDenied(f"This key may not use the model '{name}'.", param="model", code="model_not_allowed")


class InferenceService:
    """Validates, forwards and relays chat, completion and embedding requests."""

    def __init__(
        self, *, settings: Settings, catalog: Catalog, pool: UpstreamPool, admission: Admission | None = None
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.pool = pool
        self.admission = admission  # an alias passes over a saturated target

    def resolve(self, *, name: str, endpoint: Endpoint, principal: Principal) -> ModelSpec:
        """The catalogue entry for a requested model, if this caller may use it on this endpoint."""
        spec = self.catalog.get(name)
        if spec is None:
            raise ModelNotFound(name)
        if not principal.may_use(name):
            raise model_not_allowed(name)
        if spec.kind != _KIND_FOR[endpoint]:
            raise InvalidRequest(f"The model '{name}' does not support {INFERENCE_PATHS[endpoint]}.", param="model")
        return spec

    def resolve_alias(
        self, alias: AliasSpec, *, endpoint: Endpoint, principal: Principal, data: dict[str, Any]
    ) -> AliasChoice:
        """The target that serves a request to an alias (gateway/aliases.py): the first the key may use that has a
        replica in rotation, is not saturated and fits the request; when every such target is saturated, the first
        that is otherwise fit (the request then waits its turn in that model's queue rather than fail)."""
        if not alias_allowed(principal.allowed_models, alias):
            raise model_not_allowed(alias.name)
        if alias.kind != _KIND_FOR[endpoint]:
            raise InvalidRequest(
                f"The model '{alias.name}' does not support {INFERENCE_PATHS[endpoint]}.", param="model"
            )
        prompt_chars = len(orjson.dumps(data.get("messages") or data.get("prompt") or data.get("input") or ""))
        asked = data.get("max_completion_tokens") or data.get("max_tokens")

        def choose(saturated: Callable[[str], bool]) -> AliasChoice:
            return choose_target(
                alias,
                self.catalog,
                allowed=lambda target: target_allowed(principal.allowed_models, alias, target),
                available=self._available,
                saturated=saturated,
                fits=lambda spec: fits_context(spec, prompt_chars=prompt_chars, max_tokens=asked),
            )

        try:
            return choose(self._saturated)
        except ModelSaturated:
            return choose(lambda _: False)

    def _available(self, model: str) -> bool:
        return any(replica.in_rotation for replica in self.pool.replicas_of(model))

    def _saturated(self, model: str) -> bool:
        spec = self.catalog.get(model)
        return spec is not None and self.admission is not None and self.admission.saturated(spec)

    def parse(self, endpoint: Endpoint, body: bytes) -> Parsed:
        """The body's one validation (RFC 8259 JSON, the endpoint's request model); a 400 naming the field."""
        return Parsed(endpoint=endpoint, request=parse_request(_REQUEST_MODELS[endpoint], body))

    def prepare(
        self,
        parsed: Parsed,
        *,
        principal: Principal,
        history: list[dict[str, Any]] | None = None,
        priority: Priority = Priority.INTERACTIVE,
        target: ModelSpec | None = None,
    ) -> Prepared:
        """Authorize the model, apply the model's defaults and bounds, and serialize for the model server.

        `history` (a conversation session's stored messages) goes before the request's own messages,
        trimmed to what fits the model's context. `priority` goes to vLLM as its `priority` field (its servers run
        with --scheduling-policy priority; a client's own `priority` field is never passed on). A request to an
        alias is sent to the target `resolve_alias` picks (`target`: the one picked before, when preparing again).
        """
        endpoint, request = parsed.endpoint, parsed.request
        name = request.model
        data = request.model_dump(exclude_unset=True)
        choice: AliasChoice | None = None
        if target is not None:  # prepared once already (a session's history added): the same target again
            spec = target
        elif (alias := self.catalog.alias(name)) is not None:
            choice = self.resolve_alias(alias, endpoint=endpoint, principal=principal, data=data)
            spec = choice.target
        else:
            spec = self.resolve(name=name, endpoint=endpoint, principal=principal)
        if isinstance(request, EmbeddingRequest):
            self._check_embedding(request)
        else:
            self._check_generation(data, spec)
        if isinstance(request, ChatCompletionRequest):
            self._check_tools(request, spec)
        new_messages: list[dict[str, Any]] = []
        if history is not None and endpoint == "chat":
            new_messages = data["messages"]
            answer_tokens = data.get("max_completion_tokens") or data.get("max_tokens") or DEFAULT_ANSWER_TOKENS
            kept = trim_history(history, new=new_messages, budget=spec.max_model_len - answer_tokens)
            data["messages"] = kept + new_messages
        data["model"] = spec.upstream_name
        if priority.rank:  # interactive is vLLM's default (0): its payload, and cache key, stay as they were
            data["priority"] = priority.rank
        stream = bool(data.get("stream"))
        client_wants_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        if stream:
            data["stream_options"] = {**(data.get("stream_options") or {}), "include_usage": True}
        return Prepared(
            endpoint=endpoint,
            spec=spec,
            requested_name=name,
            payload=encode_for_upstream(data),
            stream=stream,
            client_wants_usage=client_wants_usage,
            new_messages=new_messages,
            completion_budget=completion_budget(data, spec, endpoint),
            deterministic=_deterministic(data, endpoint),
            alias=choice,
        )

    def _check_generation(self, data: dict[str, Any], spec: ModelSpec) -> None:
        for name in ("max_tokens", "max_completion_tokens"):
            asked = data.get(name)
            if asked is not None and asked > spec.max_tokens:
                raise InvalidRequest(
                    f"'{name}' is {asked}, above the limit of {spec.max_tokens} for the model '{spec.name}'.",
                    param=name,
                    code="max_tokens_exceeded",
                )
        for name in ("n", "best_of"):
            asked = data.get(name)
            if asked is not None and asked > self.settings.max_n:
                raise InvalidRequest(
                    f"'{name}' is {asked}, above this server's limit of {self.settings.max_n}.", param=name
                )
        min_tokens = data.get("min_tokens")
        if min_tokens is not None:
            most = min(data.get("max_completion_tokens") or data.get("max_tokens") or spec.max_tokens, spec.max_tokens)
            if min_tokens > most:
                raise InvalidRequest(
                    f"'min_tokens' is {min_tokens}, above the {most} tokens this request may generate "
                    f"on the model '{spec.name}'.",
                    param="min_tokens",
                )
        if data.get("temperature") is None:
            data["temperature"] = spec.temperature

    def _check_tools(self, request: ChatCompletionRequest, spec: ModelSpec) -> None:
        """Tools that agree with tool_choice, and a model served with tool calling for any choice but "none"."""
        problem = tools_problem(request.tools, request.tool_choice)
        if problem is not None:
            param, message = problem
            raise InvalidRequest(f"Invalid value for '{param}': {message}.", param=param)
        if request.structured_outputs is not None and isinstance(request.tool_choice, NamedToolChoice):
            raise InvalidRequest(
                "'structured_outputs' cannot be combined with a named 'tool_choice': the call's arguments already "
                "follow the function's schema.",
                param="structured_outputs",
            )
        # vLLM defaults tool_choice to "auto" when tools are given.
        choice = request.tool_choice if request.tool_choice is not None else ("auto" if request.tools else "none")
        if choice == "none" or spec.tool_call_parser:
            return
        able = ", ".join(name for name, model in self.catalog.models.items() if model.tool_call_parser) or "none"
        asked = f"'{choice}'" if isinstance(choice, str) else f"a named function ('{choice.function.name}')"
        default = " (the default when 'tools' are given)" if request.tool_choice is None else ""
        raise InvalidRequest(
            f"The model '{spec.name}' is served without tool calling (no tool-call parser in its configuration), so "
            f"it cannot take tool_choice {asked}{default}. Send tool_choice 'none', or use a model with tool "
            f"calling: {able}.",
            param="tool_choice",
            code="tool_calling_unsupported",
        )

    def _check_embedding(self, request: EmbeddingRequest) -> None:
        count = request.input_count()
        if count > self.settings.max_embedding_inputs:
            raise InvalidRequest(
                f"'input' has {count} items, above this server's limit of {self.settings.max_embedding_inputs}.",
                param="input",
            )

    async def forward(
        self,
        prepared: Prepared,
        *,
        request_id: str,
        usage: Usage,
        answer: Answer | None = None,
        trace: RequestContext | None = None,
    ) -> Response:
        """Send a prepared request upstream and relay the answer (JSON, or SSE for streams).

        `usage` receives the token counts when they are known (after the body, or the stream's end);
        `answer`, when given, receives the assistant's message (for conversation sessions); `trace` (the
        request's context) receives `retries`.
        """
        spec = prepared.spec
        exchange = await self.pool.post(
            spec,
            INFERENCE_PATHS[prepared.endpoint],
            prepared.payload,
            request_id=request_id,
            stream=prepared.stream,
            trace=trace,
        )
        if not prepared.stream:
            body = _renamed(exchange.body, spec, prepared.requested_name, usage, answer)
            return Response(body, media_type="application/json")
        return StreamingResponse(
            relay_stream(
                exchange,
                spec=spec,
                requested_name=prepared.requested_name,
                usage=usage,
                forward_usage=prepared.client_wants_usage,
                answer=answer,
            ),
            media_type="text/event-stream",
            headers=_STREAM_HEADERS,
        )


def _renamed(body: bytes, spec: ModelSpec, requested_name: str, usage: Usage, answer: Answer | None) -> bytes:
    """Check the upstream's JSON answer, note its usage, and give it the model name the client asked for."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        count_upstream_error(spec.name, "malformed")
        raise UpstreamError(f"The model '{spec.name}' sent an answer that is not a JSON object.")
    parsed["model"] = requested_name
    if isinstance(parsed.get("usage"), dict):
        usage.take(parsed["usage"])
    if answer is not None and parsed.get("choices"):
        message = parsed["choices"][0].get("message")
        if isinstance(message, dict):
            answer.whole(message)
    return orjson.dumps(parsed)
