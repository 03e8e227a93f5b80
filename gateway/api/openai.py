"""The OpenAI-compatible routes under /v1."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ..auth import InferenceCaller, Permission, PrincipalDep, require
from ..conversations import SESSION_HEADER
from ..errors import ModelNotFound
from ..inference import model_not_allowed
from ..pipeline import Pipeline
from ..protocol.chat import ChatCompletionRequest
from ..protocol.completions import CompletionRequest
from ..protocol.embeddings import EmbeddingRequest
from ..protocol.models import model_card
from ..protocol.responses import ChatCompletion, ChatCompletionChunk, Completion, EmbeddingList, ModelCard, ModelList
from ..services import services_of
from .deps import CatalogDep
from .openapi_schema import KEYED_ERRORS, errors, event_stream, json_body, request_headers

router = APIRouter(prefix="/v1", tags=["openai"])

# Model cards carry the gateway's start time as `created`.
_STARTED = int(time.time())

_MODELS_READ = [Depends(require(Permission.MODELS_READ))]

# The inference routes are the hot path: their only dependency is the guard (which puts the caller in the
# request's context), and the pipeline comes straight from the services. Each extra FastAPI dependency cost ~10 us.
# They relay the model server's bytes: `response_model=None` (nothing re-validated), the shapes documented only.
_INFERENCE_ERRORS = errors(*KEYED_ERRORS, 403, 404, 502, 504)


def _pipeline(request: Request) -> Pipeline:
    return services_of(request.app).pipeline


@router.post(
    "/chat/completions",
    response_model=None,
    openapi_extra={
        **json_body(ChatCompletionRequest),
        **request_headers("X-Request-ID", "X-Session-ID", "X-Cache", "Cache-Control"),
    },
    responses={200: {"model": ChatCompletion, "content": event_stream(ChatCompletionChunk)}, **_INFERENCE_ERRORS},
)
async def chat_completions(request: Request, caller: InferenceCaller) -> Response:
    """OpenAI chat completions, streamed as SSE when `stream` is true; `X-Session-ID` keeps a conversation."""
    session = request.headers.get(SESSION_HEADER)
    return await _pipeline(request).serve(endpoint="chat", request=request, principal=caller, session=session)


@router.post(
    "/completions",
    response_model=None,
    openapi_extra={**json_body(CompletionRequest), **request_headers("X-Request-ID", "X-Cache", "Cache-Control")},
    responses={200: {"model": Completion, "content": event_stream(Completion)}, **_INFERENCE_ERRORS},
)
async def completions(request: Request, caller: InferenceCaller) -> Response:
    """OpenAI (legacy) text completions, streamed as SSE when `stream` is true."""
    return await _pipeline(request).serve(endpoint="completions", request=request, principal=caller, session=None)


@router.post(
    "/embeddings",
    response_model=None,
    openapi_extra={**json_body(EmbeddingRequest), **request_headers("X-Request-ID", "X-Cache", "Cache-Control")},
    responses={200: {"model": EmbeddingList}, **_INFERENCE_ERRORS},
)
async def embeddings(request: Request, caller: InferenceCaller) -> Response:
    """OpenAI embeddings."""
    return await _pipeline(request).serve(endpoint="embeddings", request=request, principal=caller, session=None)


@router.get(
    "/models",
    dependencies=_MODELS_READ,
    response_model=ModelList,
    response_model_exclude_none=True,
    responses=errors(*KEYED_ERRORS),
)
async def list_models(catalog: CatalogDep, principal: PrincipalDep) -> dict[str, object]:
    """The models this key may use."""
    cards = [model_card(spec, created=_STARTED) for spec in catalog.models.values() if principal.may_use(spec.name)]
    return {"object": "list", "data": cards}


@router.get(
    "/models/{model}",
    dependencies=_MODELS_READ,
    response_model=ModelCard,
    response_model_exclude_none=True,
    responses=errors(*KEYED_ERRORS, 403, 404),
)
async def get_model(model: str, catalog: CatalogDep, principal: PrincipalDep) -> dict[str, object]:
    """One model; 404 if it does not exist, 403 if this key may not use it."""
    spec = catalog.get(model)
    if spec is None:
        raise ModelNotFound(model)
    if not principal.may_use(model):
        raise model_not_allowed(model)
    return model_card(spec, created=_STARTED)
