"""The serving layer for the OpenAI endpoints: validate and clamp a request, forward it, relay the answer.

Routes stay wiring only; everything a request goes through between authentication and the model server
lives here, so a later concern (limits, cache, audit) has one obvious place to plug in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel
from starlette.responses import Response, StreamingResponse

from .auth import Principal
from .catalog import Catalog, ModelSpec
from .errors import InvalidRequest, ModelNotFound, UpstreamError
from .protocol.chat import ChatCompletionRequest
from .protocol.common import parse_request
from .protocol.completions import CompletionRequest
from .protocol.embeddings import EmbeddingRequest
from .settings import Settings
from .upstream.pool import UpstreamPool, status_error, translate_errors
from .upstream.sse import relay_stream

Endpoint = Literal["chat", "completions", "embeddings"]

_PATHS: dict[Endpoint, str] = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}
_KIND_FOR: dict[Endpoint, str] = {"chat": "chat", "completions": "chat", "embeddings": "embedding"}
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(slots=True)
class Prepared:
    """A validated request, ready for the model server."""

    endpoint: Endpoint
    spec: ModelSpec
    requested_name: str
    payload: bytes
    stream: bool


class InferenceService:
    """Validates, forwards and relays chat, completion and embedding requests."""

    def __init__(self, *, settings: Settings, catalog: Catalog, pool: UpstreamPool) -> None:
        self.settings = settings
        self.catalog = catalog
        self.pool = pool

    def resolve(self, *, name: str, endpoint: Endpoint, principal: Principal) -> ModelSpec:
        """The catalogue entry for a requested model, if this caller may use it on this endpoint."""
        spec = self.catalog.get(name)
        if spec is None or not principal.may_use(name):
            raise ModelNotFound(name)
        if spec.kind != _KIND_FOR[endpoint]:
            raise InvalidRequest(f"The model '{name}' does not support {_PATHS[endpoint]}.", param="model")
        return spec

    def prepare(self, *, endpoint: Endpoint, body: bytes, principal: Principal) -> Prepared:
        """Parse, authorize the model, apply the model's defaults and bounds, and re-serialize."""
        request: BaseModel
        if endpoint == "chat":
            request = parse_request(ChatCompletionRequest, body)
        elif endpoint == "completions":
            request = parse_request(CompletionRequest, body)
        else:
            request = parse_request(EmbeddingRequest, body)
        name: str = request.model  # type: ignore[attr-defined]
        spec = self.resolve(name=name, endpoint=endpoint, principal=principal)
        data = request.model_dump(exclude_unset=True)
        if isinstance(request, EmbeddingRequest):
            self._check_embedding(request)
        else:
            self._check_generation(data, spec)
        data["model"] = spec.upstream_name
        return Prepared(
            endpoint=endpoint,
            spec=spec,
            requested_name=name,
            payload=orjson.dumps(data),
            stream=bool(data.get("stream")),
        )

    def _check_generation(self, data: dict[str, Any], spec: ModelSpec) -> None:
        for field in ("max_tokens", "max_completion_tokens"):
            asked = data.get(field)
            if asked is not None and asked > spec.max_tokens:
                raise InvalidRequest(
                    f"'{field}' is {asked}, above the limit of {spec.max_tokens} for the model '{spec.name}'.",
                    param=field,
                    code="max_tokens_exceeded",
                )
        for field in ("n", "best_of"):
            asked = data.get(field)
            if asked is not None and asked > self.settings.max_n:
                raise InvalidRequest(
                    f"'{field}' is {asked}, above this server's limit of {self.settings.max_n}.", param=field
                )
        if data.get("temperature") is None:
            data["temperature"] = spec.temperature

    def _check_embedding(self, request: EmbeddingRequest) -> None:
        count = request.input_count()
        if count > self.settings.max_embedding_inputs:
            raise InvalidRequest(
                f"'input' has {count} items, above this server's limit of {self.settings.max_embedding_inputs}.",
                param="input",
            )

    async def forward(self, prepared: Prepared, *, request_id: str) -> Response:
        """Send a prepared request upstream and relay the answer (JSON, or SSE for streams)."""
        spec = prepared.spec
        response = await self.pool.post(spec, _PATHS[prepared.endpoint], prepared.payload, request_id=request_id)
        if response.status >= 400 or not prepared.stream:
            try:
                with translate_errors(spec):
                    body = await response.read()
            finally:
                response.release()
            if response.status >= 400:
                raise status_error(spec, response.status, body)
            return Response(_renamed(body, spec, prepared.requested_name), media_type="application/json")
        return StreamingResponse(
            relay_stream(response, spec=spec, requested_name=prepared.requested_name),
            media_type="text/event-stream",
            headers=_STREAM_HEADERS,
        )


def _renamed(body: bytes, spec: ModelSpec, requested_name: str) -> bytes:
    """Check the upstream's JSON answer and give it the model name the client asked for."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise UpstreamError(f"The model '{spec.name}' sent an answer that is not a JSON object.")
    parsed["model"] = requested_name
    return orjson.dumps(parsed)
