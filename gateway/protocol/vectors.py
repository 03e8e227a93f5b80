"""Vector collections and retrieval: the request bodies of /v1/vectors/... and the chat `retrieval` extension."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from .common import WIRE_CONFIG, ModelName

# Lower case, digits, '-' and '_': the same name can never mean two collections that differ only by case.
CollectionName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
# Document ids travel in a response header (X-Retrieval-Documents): header-safe characters only, no commas.
DocumentId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:@-]{1,128}$")]
FieldName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]

MAX_TEXT_CHARS = 16_384
MAX_VECTOR_DIMENSIONS = 8_192

Scalar = Annotated[str, Field(max_length=2048)] | bool | int | float
MetadataValue = Scalar | Annotated[list[Annotated[str, Field(max_length=256)] | int], Field(max_length=64)] | None
Metadata = Annotated[dict[FieldName, MetadataValue], Field(max_length=32)]
Vector = Annotated[list[float], Field(min_length=1, max_length=MAX_VECTOR_DIMENSIONS)]
# A metadata filter: {"field": value | [values] | {"gt"|"gte"|"lt"|"lte": number}}, all conditions must hold.
# Its shape is checked by gateway/vectors/filters.py (an invalid filter is a 400 naming the field).
MetadataFilter = Annotated[dict[str, object], Field(max_length=16)]


class CollectionCreate(BaseModel):
    model_config = WIRE_CONFIG

    name: CollectionName
    # The embedding model that embeds its documents and queries (default: the catalogue's first one).
    model: ModelName | None = None
    distance: Literal["cosine", "dot", "euclid"] = "cosine"
    # Admins only: a collection every key may read (only admins write it).
    shared: bool = False


class DocumentIn(BaseModel):
    model_config = WIRE_CONFIG

    id: DocumentId | None = None  # default: a new random id; an existing id is replaced
    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
    metadata: Metadata | None = None
    vector: Vector | None = None  # given: stored as is (its length must match the collection), not embedded


class UpsertRequest(BaseModel):
    model_config = WIRE_CONFIG

    # Not bounded here: an empty list is a 400 and a list over the server's limit a 413 (gateway/vectors).
    documents: list[DocumentIn]


class SearchRequest(BaseModel):
    model_config = WIRE_CONFIG

    query: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)] | None = None
    vector: Vector | None = None
    top_k: Annotated[int, Field(ge=1, le=100)] = 5
    score_threshold: float | None = None
    filter: MetadataFilter | None = None


class DeleteDocumentsRequest(BaseModel):
    model_config = WIRE_CONFIG

    ids: Annotated[list[DocumentId], Field(max_length=1000)] | None = None
    filter: MetadataFilter | None = None


class RetrievalOptions(BaseModel):
    """The `retrieval` extension of a chat completion request; never forwarded to the model server."""

    model_config = WIRE_CONFIG

    collection: CollectionName
    top_k: Annotated[int, Field(ge=1, le=20)] = 4
    score_threshold: float | None = None
    filter: MetadataFilter | None = None
    # What to search for (default: the text of the last user message).
    query: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)] | None = None
