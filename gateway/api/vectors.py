"""Vector collections under /v1/vectors: collections, documents, search (wiring only; see gateway/vectors)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response

from ..auth import Permission, Principal, require
from ..context import context_of
from ..protocol.common import parse_request
from ..protocol.responses import (
    VectorCollection,
    VectorCollectionDeleted,
    VectorCollectionList,
    VectorDocument,
    VectorDocumentDeleted,
    VectorDocumentsDeleted,
    VectorSearchResult,
    VectorUpsertResult,
)
from ..protocol.vectors import CollectionCreate, DeleteDocumentsRequest, SearchRequest, UpsertRequest
from ..services import services_of
from ..vectors.service import VectorService, hit_object
from .openapi_schema import KEYED_ERRORS, errors, json_body

# Every vector route may answer 503 (the vector store is unreachable); one that names a collection, 404 (unknown or
# invisible); a write, 403 (a viewer, a model collection, a full quota); one that embeds texts, the model's errors.
router = APIRouter(prefix="/v1/vectors", tags=["vectors"], responses=errors(*KEYED_ERRORS))
_FOUND = errors(404)
_WRITE = errors(403, 404)
_EMBEDS = errors(403, 404, 502, 504)  # 403: a key whose allow-list lacks the embedding model

Reader = Annotated[Principal, Depends(require(Permission.VECTORS_READ))]
Writer = Annotated[Principal, Depends(require(Permission.VECTORS_WRITE))]
Name = Annotated[str, Path(max_length=64)]
DocId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:@-]{1,128}$")]


async def get_vectors(request: Request) -> VectorService:
    return services_of(request.app).vectors


VectorsDep = Annotated[VectorService, Depends(get_vectors)]


async def _body(request: Request) -> bytes:
    return await request.body()  # bounded by BodyLimitMiddleware (413 past CITADEL_MAX_BODY_BYTES)


def _request_id(request: Request) -> str:
    return context_of(request.scope).request_id


async def _admit(request: Request, response: Response, vectors: VectorService, *, text_chars: int) -> None:
    """A request that may embed texts: the key's rate limits apply as to /v1/embeddings (429 when over; tokens
    estimated from the texts to embed), with the limit headers on the answer."""
    model = vectors.embedder.default_model() or "vectors"
    pipeline = services_of(request.app).pipeline
    headers = await pipeline.admit_embedding(context_of(request.scope), model=model, text_chars=text_chars)
    response.headers.update(headers)


@router.post(
    "/collections",
    response_model=VectorCollection,
    openapi_extra=json_body(CollectionCreate),
    responses=errors(403, 404, 409, 502, 504),  # 404: an unknown embedding model; 5xx: its dimensions probe
)
async def create_collection(request: Request, caller: Writer, vectors: VectorsDep) -> dict[str, Any]:
    """Create a collection: `name`, optional embedding `model`, `distance`, `shared` (admins)."""
    create = parse_request(CollectionCreate, await _body(request))
    info = await vectors.create_collection(principal=caller, request=create, request_id=_request_id(request))
    return await vectors.describe(info)


@router.get("/collections", response_model=VectorCollectionList)
async def list_collections(caller: Reader, vectors: VectorsDep) -> dict[str, Any]:
    """The collections this key may see (admins: all)."""
    return {"object": "list", "data": await vectors.list_collections(principal=caller)}


@router.get("/collections/{name}", response_model=VectorCollection, responses=_FOUND)
async def get_collection(name: Name, caller: Reader, vectors: VectorsDep) -> dict[str, Any]:
    return await vectors.describe(await vectors.collection(principal=caller, name=name))


@router.delete("/collections/{name}", response_model=VectorCollectionDeleted, responses=_WRITE)
async def delete_collection(name: Name, caller: Writer, vectors: VectorsDep) -> dict[str, Any]:
    await vectors.delete_collection(principal=caller, name=name)
    return {"object": "vector.collection.deleted", "name": name, "deleted": True}


@router.post(
    "/collections/{name}/documents",
    response_model=VectorUpsertResult,
    openapi_extra=json_body(UpsertRequest),
    responses={**_WRITE, **_EMBEDS},
)
async def upsert_documents(
    name: Name, request: Request, response: Response, caller: Writer, vectors: VectorsDep
) -> dict[str, Any]:
    """Add or replace documents (`id`, `text`, `metadata`, optional `vector`); texts are embedded in batches."""
    upsert = parse_request(UpsertRequest, await _body(request))
    to_embed = sum(len(doc.text) for doc in upsert.documents if doc.vector is None)
    await _admit(request, response, vectors, text_chars=to_embed)
    ids, usage = await vectors.upsert(principal=caller, name=name, request=upsert, request_id=_request_id(request))
    return {"object": "vector.upsert", "collection": name, "ids": ids, "count": len(ids), "usage": usage}


@router.post(
    "/collections/{name}/search",
    response_model=VectorSearchResult,
    openapi_extra=json_body(SearchRequest),
    responses=_EMBEDS,
)
async def search(
    name: Name, request: Request, response: Response, caller: Reader, vectors: VectorsDep
) -> dict[str, Any]:
    """Nearest documents to `query` (a text) or `vector`, with `top_k`, `score_threshold` and `filter`."""
    query = parse_request(SearchRequest, await _body(request))
    await _admit(request, response, vectors, text_chars=len(query.query or ""))
    hits, usage = await vectors.search(principal=caller, name=name, request=query, request_id=_request_id(request))
    return {"object": "list", "collection": name, "data": [hit_object(hit) for hit in hits], "usage": usage}


@router.post(
    "/collections/{name}/documents/delete",
    response_model=VectorDocumentsDeleted,
    openapi_extra=json_body(DeleteDocumentsRequest),
    responses=_WRITE,
)
async def delete_documents(name: Name, request: Request, caller: Writer, vectors: VectorsDep) -> dict[str, Any]:
    """Delete documents by `ids`, by `filter`, or both (ANDed)."""
    which = parse_request(DeleteDocumentsRequest, await _body(request))
    deleted = await vectors.delete_documents(principal=caller, name=name, request=which)
    return {"object": "vector.documents.deleted", "collection": name, "deleted": deleted}


@router.get("/collections/{name}/documents/{doc_id}", response_model=VectorDocument, responses=_FOUND)
async def get_document(name: Name, doc_id: DocId, caller: Reader, vectors: VectorsDep) -> dict[str, Any]:
    return await vectors.document(principal=caller, name=name, doc_id=doc_id)


@router.delete("/collections/{name}/documents/{doc_id}", response_model=VectorDocumentDeleted, responses=_WRITE)
async def delete_document(name: Name, doc_id: DocId, caller: Writer, vectors: VectorsDep) -> dict[str, Any]:
    deleted = await vectors.delete_documents(principal=caller, name=name, request=DeleteDocumentsRequest(ids=[doc_id]))
    return {"object": "vector.document.deleted", "collection": name, "id": doc_id, "deleted": deleted > 0}
