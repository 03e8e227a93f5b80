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
from ..protocol.models import model_card
from .deps import CatalogDep

router = APIRouter(prefix="/v1", tags=["openai"])

# Model cards carry the gateway's start time as `created`.
_STARTED = int(time.time())

_MODELS_READ = [Depends(require(Permission.MODELS_READ))]

# The inference routes are the hot path: their only dependency is the guard (which hands over the
# caller), and the pipeline comes straight from app.state. Each extra FastAPI dependency cost ~10 us.


def _pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline  # type: ignore[no-any-return]


@router.post("/chat/completions")
async def chat_completions(request: Request, caller: InferenceCaller) -> Response:
    """OpenAI chat completions, streamed as SSE when `stream` is true; `X-Session-ID` keeps a conversation."""
    session = request.headers.get(SESSION_HEADER)
    return await _pipeline(request).serve(endpoint="chat", request=request, principal=caller, session=session)


@router.post("/completions")
async def completions(request: Request, caller: InferenceCaller) -> Response:
    """OpenAI (legacy) text completions, streamed as SSE when `stream` is true."""
    return await _pipeline(request).serve(endpoint="completions", request=request, principal=caller, session=None)


@router.post("/embeddings")
async def embeddings(request: Request, caller: InferenceCaller) -> Response:
    """OpenAI embeddings."""
    return await _pipeline(request).serve(endpoint="embeddings", request=request, principal=caller, session=None)


@router.get("/models", dependencies=_MODELS_READ)
async def list_models(catalog: CatalogDep, principal: PrincipalDep) -> dict[str, object]:
    """The models this key may use."""
    cards = [model_card(spec, created=_STARTED) for spec in catalog.models.values() if principal.may_use(spec.name)]
    return {"object": "list", "data": cards}


@router.get("/models/{model}", dependencies=_MODELS_READ)
async def get_model(model: str, catalog: CatalogDep, principal: PrincipalDep) -> dict[str, object]:
    """One model; 404 if it does not exist, 403 if this key may not use it."""
    spec = catalog.get(model)
    if spec is None:
        raise ModelNotFound(model)
    if not principal.may_use(model):
        raise model_not_allowed(model)
    return model_card(spec, created=_STARTED)
