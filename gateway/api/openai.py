"""The OpenAI-compatible routes under /v1."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ..auth import Permission, PrincipalDep, require
from ..errors import ModelNotFound
from ..inference import Endpoint
from ..protocol.models import model_card
from .deps import CatalogDep, InferenceDep, read_body, request_id

router = APIRouter(prefix="/v1", tags=["openai"])

# Model cards carry the gateway's start time as `created`.
_STARTED = int(time.time())

_INFERENCE = [Depends(require(Permission.INFERENCE))]
_MODELS_READ = [Depends(require(Permission.MODELS_READ))]


async def _serve(endpoint: Endpoint, request: Request, inference: InferenceDep, principal: PrincipalDep) -> Response:
    body = await read_body(request, limit=inference.settings.max_body_bytes)
    prepared = inference.prepare(endpoint=endpoint, body=body, principal=principal)
    return await inference.forward(prepared, request_id=request_id(request))


@router.post("/chat/completions", dependencies=_INFERENCE)
async def chat_completions(request: Request, inference: InferenceDep, principal: PrincipalDep) -> Response:
    """OpenAI chat completions, streamed as SSE when `stream` is true."""
    return await _serve("chat", request, inference, principal)


@router.post("/completions", dependencies=_INFERENCE)
async def completions(request: Request, inference: InferenceDep, principal: PrincipalDep) -> Response:
    """OpenAI (legacy) text completions, streamed as SSE when `stream` is true."""
    return await _serve("completions", request, inference, principal)


@router.post("/embeddings", dependencies=_INFERENCE)
async def embeddings(request: Request, inference: InferenceDep, principal: PrincipalDep) -> Response:
    """OpenAI embeddings."""
    return await _serve("embeddings", request, inference, principal)


@router.get("/models", dependencies=_MODELS_READ)
async def list_models(catalog: CatalogDep, principal: PrincipalDep) -> dict[str, object]:
    """The models this key may use."""
    cards = [model_card(spec, created=_STARTED) for spec in catalog.models.values() if principal.may_use(spec.name)]
    return {"object": "list", "data": cards}


@router.get("/models/{model}", dependencies=_MODELS_READ)
async def get_model(model: str, catalog: CatalogDep, principal: PrincipalDep) -> dict[str, object]:
    """One model, or 404 if it does not exist or this key may not use it."""
    spec = catalog.get(model)
    if spec is None or not principal.may_use(model):
        raise ModelNotFound(model)
    return model_card(spec, created=_STARTED)
