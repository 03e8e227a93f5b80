"""Response bodies as the OpenAPI schema documents them: the gateway's own answers, the errors, and the OpenAI
answers of the model servers that the inference routes relay.

The inference routes return the model server's bytes (renamed, never re-validated: the hot path), so their
models here document the shape only. Models of answers the gateway builds from dicts allow extra fields, so a
field added in a route is never dropped silently by FastAPI's response filtering.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .vectors import MetadataValue

OPEN = ConfigDict(extra="allow")


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, permission_error, requests, ...")
    param: str | None = Field(description="The request field the error is about, when there is one.")
    code: str | int | None = Field(description="A machine-readable code, e.g. model_not_found, rate_limit_exceeded.")


class ErrorResponse(BaseModel):
    """Every error, the gateway's or a library's, in OpenAI's shape."""

    error: ErrorDetail


# ---- health ----------------------------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["healthy"]
    service: Literal["gateway"]
    timestamp: Annotated[str, Field(description="ISO 8601, UTC.")]


class ReplicaState(BaseModel):
    replica: int
    healthy: bool
    breaker: Literal["closed", "open", "half_open"]
    in_flight: int
    error: str | None
    latency_ms: float | None


class ReadinessCheck(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    latency_ms: float
    detail: str
    replicas: list[ReplicaState] | None = Field(default=None, description="Model checks only.")


class ReadinessReport(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    checks: dict[str, ReadinessCheck] = Field(
        description="One per dependency (postgres, redis, qdrant, audit) and per model (`model:<name>`)."
    )


# ---- models ----------------------------------------------------------------------------------------------------


class ModelCard(BaseModel):
    model_config = OPEN

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    kind: Literal["chat", "embedding"]
    display_name: str
    max_model_len: int
    max_tokens: int
    dimensions: int | None = Field(default=None, description="Embedding models only.")
    alias_of: list[str] | None = Field(
        default=None,
        description="Aliases only: the models this name stands for, in the order tried (those this key may use). "
        "`max_model_len` and `max_tokens` are then the largest of theirs.",
    )


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


# ---- the OpenAI answers relayed from the model servers (documentation only) ------------------------------------


class Usage(BaseModel):
    model_config = OPEN

    prompt_tokens: int
    completion_tokens: int | None = None
    total_tokens: int


class RetrievedDocument(BaseModel):
    id: str
    score: float


class RetrievalInfo(BaseModel):
    """Gateway extension: the documents a retrieval-augmented chat used (see docs/api.md)."""

    collection: str
    documents: list[RetrievedDocument]


class ChatCompletionMessage(BaseModel):
    model_config = OPEN

    role: str
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChoice(BaseModel):
    model_config = OPEN

    index: int
    message: ChatCompletionMessage
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(BaseModel):
    model_config = OPEN

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str = Field(description="The name the client asked for.")
    choices: list[ChatChoice]
    usage: Usage | None = None
    retrieval: RetrievalInfo | None = None


class ChatDelta(BaseModel):
    model_config = OPEN

    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChunkChoice(BaseModel):
    model_config = OPEN

    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a chat stream. The last one, with `choices: []`, may carry `usage` (when asked) or
    `retrieval`."""

    model_config = OPEN

    id: str | None
    object: Literal["chat.completion.chunk"]
    created: int | None
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    retrieval: RetrievalInfo | None = None


class CompletionChoice(BaseModel):
    model_config = OPEN

    index: int
    text: str
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class Completion(BaseModel):
    """A text completion, or one `data:` event of its stream (the same object)."""

    model_config = OPEN

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Embedding(BaseModel):
    model_config = OPEN

    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 with `encoding_format: base64`.")


class EmbeddingList(BaseModel):
    model_config = OPEN

    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


# ---- vector collections ----------------------------------------------------------------------------------------


class VectorCollection(BaseModel):
    model_config = OPEN

    object: Literal["vector.collection"]
    name: str
    model: str
    dimensions: int
    distance: Literal["cosine", "dot", "euclid"]
    owner: str = Field(description="The id of the key that made it, or `shared`.")
    chat_model: str | None = Field(description="Set on the model collections (`model-<chat model>`).")
    documents: int | None
    created_at: int


class VectorCollectionList(BaseModel):
    object: Literal["list"]
    data: list[VectorCollection]


class VectorCollectionDeleted(BaseModel):
    object: Literal["vector.collection.deleted"]
    name: str
    deleted: bool


class EmbeddingUsage(BaseModel):
    model_config = OPEN

    prompt_tokens: int
    total_tokens: int


class VectorUpsertResult(BaseModel):
    model_config = OPEN

    object: Literal["vector.upsert"]
    collection: str
    ids: list[str]
    count: int
    usage: EmbeddingUsage


class VectorSearchHit(BaseModel):
    model_config = OPEN

    object: Literal["vector.search_result"]
    id: str | None
    score: float
    text: str | None
    metadata: dict[str, MetadataValue]


class VectorSearchResult(BaseModel):
    model_config = OPEN

    object: Literal["list"]
    collection: str
    data: list[VectorSearchHit]
    usage: EmbeddingUsage


class VectorDocumentsDeleted(BaseModel):
    object: Literal["vector.documents.deleted"]
    collection: str
    deleted: int


class VectorDocument(BaseModel):
    model_config = OPEN

    object: Literal["vector.document"]
    id: str
    text: str | None
    metadata: dict[str, MetadataValue] | None


class VectorDocumentDeleted(BaseModel):
    object: Literal["vector.document.deleted"]
    collection: str
    id: str
    deleted: bool
