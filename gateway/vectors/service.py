"""VectorService (Services.vectors): collections with owners, documents, search; built once in the lifespan.

Who sees what:
  - a collection made by a key belongs to that key: any other key gets 404, as if it did not exist;
  - an admin sees and changes every collection, and may create `shared` ones (every key reads, admins write);
  - the model collections `model-<chat model>` (one per chat model, made at start-up) are readable by the
    keys allowed that chat model and writable by admins.
Every point carries its collection's owner tag (`_owner`) and every query and delete filters on it, so a
point can only ever be read through the collection it was written to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from typing import Any

import orjson
from qdrant_client import models

from ..auth import Principal
from ..errors import (
    APIError,
    CollectionExists,
    DimensionMismatch,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
)
from ..inference import InferenceService, model_not_allowed
from ..protocol.vectors import CollectionCreate, DeleteDocumentsRequest, SearchRequest, UpsertRequest
from ..settings import Settings
from .embedder import Embedder
from .filters import OWNER_FIELD, metadata_conditions, owned
from .quotas import StorageQuota, check_new_collection, check_new_documents
from .store import SHARED, CollectionInfo, QdrantStore

log = logging.getLogger(__name__)

MODEL_PREFIX = "model-"
_DOC_NAMESPACE = uuid.UUID("0b7e4f2a-2d7c-4f3e-b3c6-9d51f0a6c2e1")
_UPSERT_CHUNK = 256  # points per Qdrant request
_BOOTSTRAP_RETRY_S = 30.0


def point_id(doc_id: str) -> str:
    """Qdrant takes UUIDs or integers as ids; a client's document id maps to a stable UUID."""
    return str(uuid.uuid5(_DOC_NAMESPACE, doc_id))


def model_collection(chat_model: str) -> str:
    return MODEL_PREFIX + re.sub(r"[^a-z0-9_-]", "-", chat_model.lower())[:58]


def collection_object(info: CollectionInfo, *, documents: int | None) -> dict[str, Any]:
    return {
        "object": "vector.collection",
        "name": info.name,
        "model": info.model,
        "dimensions": info.dimensions,
        "distance": info.distance,
        "owner": info.owner,
        "chat_model": info.chat_model,
        "documents": documents,
        "created_at": info.created_at,
    }


def hit_object(point: models.ScoredPoint) -> dict[str, Any]:
    payload = point.payload or {}
    return {
        "object": "vector.search_result",
        "id": payload.get("doc_id"),
        "score": point.score,
        "text": payload.get("text"),
        "metadata": payload.get("metadata") or {},
    }


class VectorService:
    """The vector API's logic; routes and the retrieval step call it with the caller's Principal."""

    def __init__(self, *, store: QdrantStore, embedder: Embedder, settings: Settings) -> None:
        self.store = store
        self.embedder = embedder
        self.settings = settings
        self._bootstrap: asyncio.Task[None] | None = None
        self._bootstrapped_at: float | None = None  # set once the model collections exist
        self._last_try = 0.0

    @classmethod
    def start(cls, *, settings: Settings, inference: InferenceService) -> VectorService:
        """Open the store and begin making the model collections in the background (start-up never waits)."""
        service = cls(store=QdrantStore.open(settings), embedder=Embedder(inference=inference), settings=settings)
        service._bootstrap = asyncio.create_task(service._make_model_collections(at_start=True))
        return service

    async def close(self) -> None:
        if self._bootstrap is not None and not self._bootstrap.done():
            self._bootstrap.cancel()
        await self.store.close()

    async def ping(self) -> None:
        """Raises VectorStoreUnavailable when Qdrant is unreachable."""
        await self.store.ping()

    def catalog_changed(self) -> None:
        """A config reload added chat models: the next vector request makes their model collections (the start-up
        work runs again; it skips the collections that exist)."""
        if self._bootstrapped_at is not None:
            self._bootstrapped_at = None
            self._last_try = 0.0

    async def _make_model_collections(self, *, at_start: bool = False) -> None:
        """One shared collection per chat model, embedded with the default embedding model (idempotent)."""
        self._last_try = time.monotonic()
        model = self.embedder.default_model()
        if model is None:
            log.info("no embedding model in the catalogue: no model collections, no text search")
            self._bootstrapped_at = time.monotonic()
            return
        if at_start and not self.embedder.spec(model).dimensions:
            # Learning the vector size takes an embedding call: left to the first vector request, so that
            # start-up never calls a model.
            self._last_try = 0.0
            return
        catalog = self.embedder.inference.catalog
        try:
            dimensions: int | None = None
            for spec in catalog.models.values():
                if spec.kind != "chat" or await self.store.get_info(model_collection(spec.name)) is not None:
                    continue
                dimensions = dimensions or await self._dimensions(model, request_id="startup")
                with contextlib.suppress(CollectionExists):  # another worker made it first
                    await self.store.create(
                        name=model_collection(spec.name),
                        model=model,
                        dimensions=dimensions,
                        distance="cosine",
                        owner=SHARED,
                        chat_model=spec.name,
                    )
        except APIError as exc:
            log.warning("model collections not made yet (%s); retrying on a later vector request", exc.error_type)
            return
        self._bootstrapped_at = time.monotonic()

    async def _ready(self) -> None:
        """Wait for the start-up work; retry it (at most every 30 s) if it failed."""
        if self._bootstrapped_at is not None:
            return
        if self._bootstrap is not None and not self._bootstrap.done():
            await asyncio.shield(self._bootstrap)
        elif time.monotonic() - self._last_try > _BOOTSTRAP_RETRY_S:
            self._bootstrap = asyncio.create_task(self._make_model_collections())
            await asyncio.shield(self._bootstrap)

    async def _dimensions(self, model: str, *, request_id: str) -> int:
        spec = self.embedder.spec(model)
        if spec.dimensions:
            return spec.dimensions
        probe = await self.embedder.embed(["dimensions"], model=model, request_id=request_id, usage={})
        return len(probe[0])

    # --- collections ---------------------------------------------------------------------------------------

    @staticmethod
    def visible(info: CollectionInfo, principal: Principal) -> bool:
        if principal.is_admin:
            return True
        if info.chat_model is not None:
            return principal.may_use(info.chat_model)
        return info.owner in (SHARED, str(principal.key_id))

    async def collection(self, *, principal: Principal, name: str, write: bool = False) -> CollectionInfo:
        """The collection if this caller may see it (else 404) and, with `write`, change it (else 403)."""
        await self._ready()
        info = await self.store.get_info(name)
        if info is None or not self.visible(info, principal):
            raise NotFound(f"No collection named '{name}'.", param="collection", code="collection_not_found")
        if write and not principal.is_admin and info.owner != str(principal.key_id):
            raise PermissionDenied(f"Only admins may change the collection '{name}'.", param="collection")
        return info

    async def create_collection(
        self, *, principal: Principal, request: CollectionCreate, request_id: str
    ) -> CollectionInfo:
        await self._ready()
        if request.name.startswith(MODEL_PREFIX):
            raise InvalidRequest(f"Names starting with '{MODEL_PREFIX}' are the model collections'.", param="name")
        if request.shared and not principal.is_admin:
            raise PermissionDenied("Only admins may create shared collections.", param="shared")
        model = request.model or self.embedder.default_model()
        if model is None:
            raise InvalidRequest("This server has no embedding model for vector collections.", param="model")
        self.embedder.spec(model)
        if not principal.may_use(model):
            raise model_not_allowed(model)
        if not request.shared:
            await check_new_collection(self.store, principal, StorageQuota.of(principal, self.settings))
        dimensions = await self._dimensions(model, request_id=request_id)
        owner = SHARED if request.shared else str(principal.key_id)
        return await self.store.create(
            name=request.name, model=model, dimensions=dimensions, distance=request.distance, owner=owner
        )

    async def list_collections(self, *, principal: Principal) -> list[dict[str, Any]]:
        await self._ready()
        owners = None if principal.is_admin else [str(principal.key_id), SHARED]
        infos = [info for info in await self.store.list_infos(owners=owners) if self.visible(info, principal)]
        counts = await asyncio.gather(*(self._count(info) for info in infos))
        return [collection_object(info, documents=count) for info, count in zip(infos, counts, strict=True)]

    async def describe(self, info: CollectionInfo) -> dict[str, Any]:
        return collection_object(info, documents=await self._count(info))

    async def _count(self, info: CollectionInfo) -> int | None:
        try:
            return await self.store.count(info.name, scope=owned(info.owner))
        except NotFound:  # deleted meanwhile
            return None

    async def delete_collection(self, *, principal: Principal, name: str) -> None:
        info = await self.collection(principal=principal, name=name, write=True)
        if info.chat_model is not None:
            raise PermissionDenied("Model collections belong to the gateway and cannot be deleted.", param="collection")
        await self.store.drop(name)

    # --- documents -----------------------------------------------------------------------------------------

    async def upsert(
        self, *, principal: Principal, name: str, request: UpsertRequest, request_id: str
    ) -> tuple[list[str], dict[str, Any]]:
        """Embed (unless given vectors) and store documents; returns their ids and the embedding usage."""
        info = await self.collection(principal=principal, name=name, write=True)
        documents = request.documents
        if not documents:
            raise InvalidRequest("'documents' is empty.", param="documents")
        if len(documents) > self.settings.vector.max_documents:
            raise PayloadTooLarge(
                f"'documents' has {len(documents)} items, above this server's limit of "
                f"{self.settings.vector.max_documents} per request.",
                param="documents",
            )
        ids = [doc.id or uuid.uuid4().hex for doc in documents]
        if len(set(ids)) != len(ids):
            raise InvalidRequest("Two documents in one request have the same id.", param="documents")
        limit = self.settings.vector.max_document_bytes
        for index, doc in enumerate(documents):
            if doc.vector is not None:
                self._check_dimensions(info, doc.vector, param=f"documents.{index}.vector")
            if len(doc.text.encode()) + len(orjson.dumps(doc.metadata)) > limit:
                raise PayloadTooLarge(
                    f"Document {index} has more than {limit} bytes of text and metadata.", param=f"documents.{index}"
                )
        to_embed = [doc.text for doc in documents if doc.vector is None]
        if to_embed:
            self._check_may_embed(principal, info, param="documents")
        if info.owner == str(principal.key_id):  # the key's own collection: its document quota applies
            existing = await self.store.retrieve(name, ids=[point_id(doc_id) for doc_id in ids])
            await check_new_documents(
                self.store, principal, StorageQuota.of(principal, self.settings), adding=len(ids) - len(existing)
            )
        usage: dict[str, Any] = {"prompt_tokens": 0, "total_tokens": 0}
        embedded = iter(
            await self.embedder.embed(to_embed, model=info.model, request_id=request_id, usage=usage)
            if to_embed
            else []
        )
        points = []
        for doc_id, doc in zip(ids, documents, strict=True):
            vector = doc.vector if doc.vector is not None else next(embedded)
            if len(vector) != info.dimensions:
                raise DimensionMismatch(
                    f"The model '{info.model}' returned vectors of another size than the collection's."
                )
            payload = {"doc_id": doc_id, "text": doc.text, "metadata": doc.metadata or {}, OWNER_FIELD: info.owner}
            points.append(models.PointStruct(id=point_id(doc_id), vector=vector, payload=payload))
        for start in range(0, len(points), _UPSERT_CHUNK):
            await self.store.upsert(name, points[start : start + _UPSERT_CHUNK])
        return ids, usage

    @staticmethod
    def _check_may_embed(principal: Principal, info: CollectionInfo, *, param: str) -> None:
        """Embedding text runs the collection's embedding model for this key: its allow-list must name it."""
        if not principal.may_use(info.model):
            denied = model_not_allowed(info.model)
            raise PermissionDenied(
                f"{denied.message} Texts in '{info.name}' are embedded with it; send vectors instead, or ask an "
                "admin to allow the model.",
                param=param,
                code=denied.code,
            )

    @staticmethod
    def _check_dimensions(info: CollectionInfo, vector: list[float], *, param: str) -> None:
        if len(vector) != info.dimensions:
            raise DimensionMismatch(
                f"The vector has {len(vector)} dimensions; the collection '{info.name}' holds {info.dimensions}.",
                param=param,
            )

    async def search(
        self, *, principal: Principal, name: str, request: SearchRequest, request_id: str
    ) -> tuple[list[models.ScoredPoint], dict[str, Any]]:
        info = await self.collection(principal=principal, name=name)
        if (request.query is None) == (request.vector is None):
            raise InvalidRequest("Send either 'query' (a text) or 'vector', not both.", param="query")
        return await self.search_in(
            info,
            principal=principal,
            query=request.query,
            vector=request.vector,
            top_k=request.top_k,
            score_threshold=request.score_threshold,
            filter_spec=request.filter,
            request_id=request_id,
        )

    async def search_in(
        self,
        info: CollectionInfo,
        *,
        principal: Principal,
        query: str | None,
        vector: list[float] | None,
        top_k: int,
        score_threshold: float | None,
        filter_spec: dict[str, object] | None,
        request_id: str,
    ) -> tuple[list[models.ScoredPoint], dict[str, Any]]:
        """Search a collection the caller may read (already checked), by text or by vector."""
        scope = owned(info.owner, *metadata_conditions(filter_spec))  # a bad filter fails before any embedding
        usage: dict[str, Any] = {"prompt_tokens": 0, "total_tokens": 0}
        if vector is None:
            assert query is not None
            self._check_may_embed(principal, info, param="query")
            vector = (await self.embedder.embed([query], model=info.model, request_id=request_id, usage=usage))[0]
        self._check_dimensions(info, vector, param="vector")
        hits = await self.store.search(
            info.name, vector=vector, scope=scope, limit=top_k, score_threshold=score_threshold
        )
        return hits, usage

    async def delete_documents(self, *, principal: Principal, name: str, request: DeleteDocumentsRequest) -> int:
        """Delete by ids, by filter, or both (ANDed); returns how many documents went."""
        info = await self.collection(principal=principal, name=name, write=True)
        if not request.ids and not request.filter:
            raise InvalidRequest("Send 'ids' or 'filter' (or both) to say which documents to delete.", param="ids")
        conditions: list[models.Condition] = list(metadata_conditions(request.filter))
        if request.ids:
            conditions.append(models.HasIdCondition(has_id=[point_id(doc_id) for doc_id in request.ids]))
        scope = owned(info.owner, *conditions)
        count = await self.store.count(name, scope=scope)
        await self.store.delete_points(name, scope=scope)
        return count

    async def document(self, *, principal: Principal, name: str, doc_id: str) -> dict[str, Any]:
        info = await self.collection(principal=principal, name=name)
        found = await self.store.retrieve(name, ids=[point_id(doc_id)])
        payload = found[0].payload if found else None
        if not payload or payload.get(OWNER_FIELD) != info.owner:
            raise NotFound(f"No document with id '{doc_id}' in '{name}'.", param="id", code="document_not_found")
        return {
            "object": "vector.document",
            "id": doc_id,
            "text": payload.get("text"),
            "metadata": payload.get("metadata"),
        }
