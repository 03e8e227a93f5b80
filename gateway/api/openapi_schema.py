"""The OpenAPI schema (`/openapi.json`, what clients' generators and the fuzz tier read), made accurate:

- the routes that read their raw body themselves (it is bounded by BodyLimitMiddleware and parsed once by
  `parse_request`) declare it with `openapi_extra=json_body(Model)`, from the same pydantic model;
- streams are documented per event (`itemSchema` of `text/event-stream`: a JSON chunk or error, then `[DONE]`);
- errors are declared with `errors(...)` in OpenAI's shape (ErrorResponse); FastAPI's 422 is removed (the
  gateway answers 400), and so is its HTTPValidationError;
- every route but the public ones needs `Authorization: Bearer <key>` (a security scheme).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ..protocol.responses import ErrorResponse

_REF = "#/components/schemas/{model}"
# Models the schema refers to that FastAPI does not collect itself (raw bodies, stream events).
_EXTRA_MODELS: dict[str, tuple[type[BaseModel], str]] = {}

_DESCRIPTIONS = {
    400: "Invalid request: malformed JSON, a field of the wrong type or out of range (`param` names it).",
    401: "No key, or a wrong one.",
    403: "The key's role may not do this, or the key may not use this model.",
    404: "Unknown model or object.",
    409: "The name is taken.",
    413: "The body is larger than the server's limit.",
    429: "A rate limit; see `Retry-After` and the `x-ratelimit-*` headers.",
    502: "The model server's answer was not valid, or the connection broke.",
    503: "A dependency (database, Redis failing closed, vector store, model server) is unavailable.",
    504: "No answer from the model server in time.",
}


def _register(model: type[BaseModel], mode: str) -> str:
    known = _EXTRA_MODELS.setdefault(model.__name__, (model, mode))[0]
    if known is not model:
        raise RuntimeError(f"two models are named {model.__name__}: the OpenAPI schema needs unique names")
    return _REF.format(model=model.__name__)


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` of a route that reads its JSON body itself: the body, documented from its model."""
    schema = {"$ref": _register(model, "validation")}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# Optional request headers that the inference routes read (middleware.py, cache.py, conversations.py).
_HEADERS = {
    "X-Request-ID": {
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
        "description": "Echoed on the answer and forwarded upstream; another value is replaced by a new id.",
    },
    "X-Session-ID": {
        "schema": {"type": "string", "format": "uuid"},
        "description": "Keep the chat in this conversation session (docs/api.md, Conversation sessions).",
    },
    "X-Cache": {
        "schema": {"type": "string", "enum": ["force"]},
        "description": "`force`: cache this answer even if it is sampled.",
    },
    "Cache-Control": {
        "schema": {"type": "string"},
        "description": "`no-store`: no cache either way; `no-cache` or `max-age=0`: not read from the cache.",
    },
    "X-Citadel-Priority": {
        "schema": {"type": "string", "enum": ["interactive", "batch"]},
        "description": "The request's admission class, never above its key's (docs/capacity.md); another value: 400.",
    },
}


def request_headers(*names: str) -> dict[str, Any]:
    """`openapi_extra` entries for optional request headers a route reads itself (not FastAPI parameters)."""
    return {"parameters": [{"name": name, "in": "header", "required": False, **_HEADERS[name]} for name in names]}


def event_stream(*models: type[BaseModel]) -> dict[str, Any]:
    """A `text/event-stream` media type whose events are `data: <one of models, or an error>` then `data: [DONE]`."""
    events: tuple[type[BaseModel], ...] = (*models, ErrorResponse)
    payloads = [{"$ref": _register(model, "serialization")} for model in events]
    data = {
        "type": "string",
        "description": "A JSON object (a chunk, or an error that ends the stream), then the literal `[DONE]`.",
        "if": {"const": "[DONE]"},
        "else": {"contentMediaType": "application/json", "contentSchema": {"anyOf": payloads}},
    }
    event = {"type": "object", "required": ["data"], "properties": {"data": data}}
    return {"text/event-stream": {"itemSchema": event}}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for the error statuses a route can give, in OpenAI's error shape."""
    return {code: {"model": ErrorResponse, "description": _DESCRIPTIONS[code]} for code in codes}


# Any route: a Content-Length that is not a number (400) or over the limit (413). Routes behind a key: 401; 429
# (the inference limits, or the control-plane limit of every other route); 503 when the key must be looked up
# while the database is unreachable (or Redis is away and the limits fail closed).
PUBLIC_ERRORS = (400, 413)
KEYED_ERRORS = (400, 401, 413, 429, 503)


def install_openapi(app: FastAPI, *, public_paths: frozenset[str]) -> None:
    """Replace `app.openapi` with the schema described in the module docstring (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        _add_extra_models(schemas)
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer", "description": "An API key."}}
        for path, item in schema.get("paths", {}).items():
            for operation in item.values():
                operation.get("responses", {}).pop("422", None)
                if path not in public_paths:
                    operation["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_extra_models(schemas: dict[str, Any]) -> None:
    if not _EXTRA_MODELS:
        return
    pairs: list[tuple[type[BaseModel], Any]] = [(model, mode) for model, mode in _EXTRA_MODELS.values()]
    _, top = models_json_schema(pairs, ref_template=_REF)
    for name, definition in top.get("$defs", {}).items():
        schemas.setdefault(name, definition)  # one FastAPI made already is the same model's
