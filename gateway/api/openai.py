"""The OpenAI-compatible routes under /v1."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ..auth import InferenceCaller, Permission, Principal, PrincipalDep, require
from ..conversations import SESSION_HEADER, Conversations, parse_session_id
from ..errors import ModelNotFound, PermissionDenied
from ..inference import Endpoint, InferenceService, model_not_allowed
from ..protocol.models import model_card
from .deps import CatalogDep, read_body, request_id

router = APIRouter(prefix="/v1", tags=["openai"])

# Model cards carry the gateway's start time as `created`.
_STARTED = int(time.time())

_MODELS_READ = [Depends(require(Permission.MODELS_READ))]

# The inference routes are the hot path: their only dependency is the guard (which hands over the
# caller), and services come straight from app.state. Each extra FastAPI dependency cost ~10 us a request.


def _inference(request: Request) -> InferenceService:
    return request.app.state.inference  # type: ignore[no-any-return]


async def _serve(endpoint: Endpoint, request: Request, principal: Principal, *, session: str | None = None) -> Response:
    """Validate, forward and relay one request; with `session` (X-Session-ID), inside that conversation."""
    inference = _inference(request)
    conversations: Conversations = request.app.state.conversations
    session_id = None
    if session is not None:
        if not principal.can(Permission.SESSIONS):
            raise PermissionDenied("This key's role may not use conversation sessions.")
        session_id = parse_session_id(session)
    body = await read_body(request, limit=inference.settings.max_body_bytes)
    history = None
    if session_id is not None:
        history = await conversations.history(session_id=session_id, principal=principal, model=None)
    prepared = inference.prepare(endpoint=endpoint, body=body, principal=principal, history=history)
    # The audit middleware reads these once the response has gone out.
    state = request.scope["state"]
    state["model"] = prepared.requested_name
    state["stream"] = prepared.stream
    answer: dict[str, object] | None = {} if session_id is not None else None
    response = await inference.forward(
        prepared, request_id=request_id(request), usage=state.setdefault("usage", {}), answer=answer
    )
    if session_id is not None and answer is not None:
        conversations.remember_after(response, session_id=session_id, new=prepared.new_messages, answer=answer)
    return response


@router.post("/chat/completions")
async def chat_completions(request: Request, caller: InferenceCaller) -> Response:
    """OpenAI chat completions, streamed as SSE when `stream` is true; `X-Session-ID` keeps a conversation."""
    return await _serve("chat", request, caller, session=request.headers.get(SESSION_HEADER))


@router.post("/completions")
async def completions(request: Request, caller: InferenceCaller) -> Response:
    """OpenAI (legacy) text completions, streamed as SSE when `stream` is true."""
    return await _serve("completions", request, caller)


@router.post("/embeddings")
async def embeddings(request: Request, caller: InferenceCaller) -> Response:
    """OpenAI embeddings."""
    return await _serve("embeddings", request, caller)


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
