"""The OpenAI-compatible routes under /v1."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

from ..aliases import alias_allowed, allowed_targets
from ..auth import PERMISSION_ATTR, InferenceCaller, Permission, Principal, PrincipalDep, require
from ..catalog import AliasSpec, Catalog
from ..conversations import SESSION_HEADER
from ..errors import ModelNotFound
from ..inference import INFERENCE_PATHS, Endpoint, model_not_allowed
from ..pipeline import Pipeline
from ..protocol.chat import ChatCompletionRequest
from ..protocol.completions import CompletionRequest
from ..protocol.embeddings import EmbeddingRequest
from ..protocol.models import alias_card, model_card
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


_INFERENCE_GUARD = require(Permission.INFERENCE)


def _inference_handler(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """The plain Starlette endpoint of an inference route: the same guard and pipeline as the FastAPI route
    below, without FastAPI's dependency solving (~10% of a request's CPU under the profile)."""

    async def serve(request: Request) -> Response:
        caller = await _INFERENCE_GUARD(request)
        assert caller is not None  # the guard raises the 401/403 itself
        session = request.headers.get(SESSION_HEADER) if endpoint == "chat" else None
        return await _pipeline(request).serve(endpoint=endpoint, request=request, principal=caller, session=session)

    setattr(serve, PERMISSION_ATTR, Permission.INFERENCE)  # deny by default: create_app checks it is declared
    return serve


class InferenceRoute(Route):
    """POST on an inference path, served by `_inference_handler`. Mounted ahead of the routers (create_app), so it
    answers these paths; the FastAPI routes of the same paths stay for the OpenAPI schema (and are never reached).
    Errors raised in it go through the app's handlers as any route's do."""

    def __init__(self, path: str, endpoint: Endpoint) -> None:
        super().__init__(path, _inference_handler(endpoint), methods=["POST"], include_in_schema=False)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self  # audit and metrics label the request by its route's path
        return match, child_scope


def inference_routes() -> list[InferenceRoute]:
    """The hot path's routes, one per inference endpoint (mounted first by create_app)."""
    return [InferenceRoute(path, endpoint) for endpoint, path in INFERENCE_PATHS.items()]


@router.post(
    "/chat/completions",
    response_model=None,
    openapi_extra={
        **json_body(ChatCompletionRequest),
        **request_headers("X-Request-ID", "X-Session-ID", "X-Cache", "Cache-Control", "X-Citadel-Priority"),
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
    openapi_extra={
        **json_body(CompletionRequest),
        **request_headers("X-Request-ID", "X-Cache", "Cache-Control", "X-Citadel-Priority"),
    },
    responses={200: {"model": Completion, "content": event_stream(Completion)}, **_INFERENCE_ERRORS},
)
async def completions(request: Request, caller: InferenceCaller) -> Response:
    """OpenAI (legacy) text completions, streamed as SSE when `stream` is true."""
    return await _pipeline(request).serve(endpoint="completions", request=request, principal=caller, session=None)


@router.post(
    "/embeddings",
    response_model=None,
    openapi_extra={
        **json_body(EmbeddingRequest),
        **request_headers("X-Request-ID", "X-Cache", "Cache-Control", "X-Citadel-Priority"),
    },
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
    """The models this key may use, then the aliases it may call (`alias_of` names their targets)."""
    cards = [model_card(spec, created=_STARTED) for spec in catalog.models.values() if principal.may_use(spec.name)]
    for alias in catalog.aliases.values():
        card = _alias_card(alias, catalog, principal)
        if card is not None:
            cards.append(card)
    return {"object": "list", "data": cards}


@router.get(
    "/models/{model}",
    dependencies=_MODELS_READ,
    response_model=ModelCard,
    response_model_exclude_none=True,
    responses=errors(*KEYED_ERRORS, 403, 404),
)
async def get_model(model: str, catalog: CatalogDep, principal: PrincipalDep) -> dict[str, object]:
    """One model or alias; 404 if it does not exist, 403 if this key may not use it."""
    alias = catalog.alias(model)
    if alias is not None:
        card = _alias_card(alias, catalog, principal)
        if card is None:
            raise model_not_allowed(model)
        return card
    spec = catalog.get(model)
    if spec is None:
        raise ModelNotFound(model)
    if not principal.may_use(model):
        raise model_not_allowed(model)
    return model_card(spec, created=_STARTED)


def _alias_card(alias: AliasSpec, catalog: Catalog, principal: Principal) -> dict[str, object] | None:
    """An alias's card showing the targets this key may reach through it; None when it may not call the alias."""
    if not alias_allowed(principal.allowed_models, alias):
        return None
    names = allowed_targets(principal.allowed_models, alias)
    targets = [spec for spec in map(catalog.get, names) if spec is not None]
    return alias_card(alias, targets, created=_STARTED) if targets else None
