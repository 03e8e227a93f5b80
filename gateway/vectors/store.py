"""QdrantStore: the one Qdrant client (a server at QDRANT_URL, or the embedded local mode on disk), the
registry of collections; every call goes through translate_errors() (the table is gateway/errors_backends.py).

Layout in Qdrant (every name under one prefix, CITADEL_QDRANT_PREFIX, so a shared Qdrant server can hold
other data, or several gateways, too):
    citadel__registry   one point per collection: name, embedding model, dimensions, distance, owner
    citadel_<name>      the collection's documents: vector + payload {doc_id, text, metadata, _owner}
Ownership lives in the registry, not in PostgreSQL, so a collection and its owner cannot drift apart.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Literal

from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from ..errors import APIError, CollectionExists, VectorStoreUnavailable
from ..errors_backends import translate_qdrant_error
from ..observability.health_metrics import count_qdrant_failure
from ..settings import Settings

log = logging.getLogger(__name__)

SHARED = "shared"  # the owner tag of collections every key may read (model collections, admin-shared ones)
_REGISTRY_NAMESPACE = uuid.UUID("6f1d3c1e-8a53-4c1b-9f7e-0c1a2b3c4d5e")
_DISTANCES = {"cosine": models.Distance.COSINE, "dot": models.Distance.DOT, "euclid": models.Distance.EUCLID}


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    """A collection's registry entry."""

    name: str
    model: str  # the embedding model
    dimensions: int
    distance: Literal["cosine", "dot", "euclid"]
    owner: str  # the creating key's id, or SHARED
    created_at: int
    chat_model: str | None = None  # set on the model-specific collections (one per chat model)


def registry_id(name: str) -> str:
    return str(uuid.uuid5(_REGISTRY_NAMESPACE, name))


@contextmanager
def translate_errors() -> Iterator[None]:
    """Raise qdrant-client's failures as the most specific API error (errors_backends.translate_qdrant_error);
    never a host, path or payload."""
    try:
        yield
    except APIError:
        raise
    except Exception as exc:
        error = translate_qdrant_error(exc)
        if error is None:
            raise
        if isinstance(error, VectorStoreUnavailable):
            # A status here is 401/403 (check QDRANT_API_KEY) or a 5xx; logged by status or class name only.
            log.warning("qdrant is unavailable: %s", getattr(exc, "status_code", None) or type(exc).__name__)
            count_qdrant_failure("request")
        raise error from exc


class QdrantStore:
    """Built once in the app's lifespan; every call goes through translate_errors()."""

    def __init__(
        self,
        client: AsyncQdrantClient | None,
        *,
        prefix: str = "citadel_",
        remote: bool = False,
        disabled_reason: str | None = None,
    ) -> None:
        self._client = client
        self.prefix = prefix
        # User names start with a letter or digit: no collection can be called this.
        self.registry = prefix + "_registry"
        self._remote = remote
        self._disabled_reason = disabled_reason
        self._registry_ready = False

    @classmethod
    def open(cls, settings: Settings) -> QdrantStore:
        """Connect lazily to a server, or open the embedded store; never raises for an unreachable Qdrant."""
        timeout = math.ceil(settings.qdrant.timeout_s)
        if settings.qdrant_url:
            api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
            # No compatibility check: it is a blocking request at start-up, minutes long when Qdrant is away.
            client = AsyncQdrantClient(
                url=settings.qdrant_url, api_key=api_key, timeout=timeout, check_compatibility=False
            )
            return cls(client, prefix=settings.qdrant.prefix, remote=True)
        if settings.workers > 1:
            log.error("vector search is off: the embedded Qdrant store is for one process; set QDRANT_URL")
            return cls(None, disabled_reason="Vector search needs QDRANT_URL when the gateway runs several workers.")
        path = settings.qdrant.path
        try:
            path.mkdir(parents=True, exist_ok=True)
            return cls(AsyncQdrantClient(path=str(path)), prefix=settings.qdrant.prefix)
        except (RuntimeError, OSError) as exc:
            # The local mode locks its folder: another gateway process (a second worker) already holds it.
            log.error("vector search is off: cannot open the embedded Qdrant store at %s (%s)", path, exc)
            return cls(None, disabled_reason="The embedded vector store is in use by another process; set QDRANT_URL.")

    @property
    def client(self) -> AsyncQdrantClient:
        if self._client is None:
            raise VectorStoreUnavailable(self._disabled_reason)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def ping(self) -> None:
        """Raises VectorStoreUnavailable when Qdrant cannot be reached (for /health/ready)."""
        with translate_errors():
            await self.client.get_collections()

    def physical(self, name: str) -> str:
        return self.prefix + name

    async def _registry(self) -> AsyncQdrantClient:
        client = self.client
        if not self._registry_ready:
            with translate_errors():
                if not await client.collection_exists(self.registry):
                    try:
                        # The registry holds payloads only; Qdrant wants a vector, so each entry gets [1.0].
                        vectors = models.VectorParams(size=1, distance=models.Distance.DOT)
                        await client.create_collection(self.registry, vectors_config=vectors)
                    except (UnexpectedResponse, ValueError):
                        if not await client.collection_exists(self.registry):  # else: another worker made it first
                            raise
            self._registry_ready = True
        return client

    async def get_info(self, name: str) -> CollectionInfo | None:
        client = await self._registry()
        with translate_errors():
            found = await client.retrieve(self.registry, ids=[registry_id(name)], with_payload=True)
        return CollectionInfo(**found[0].payload) if found and found[0].payload else None

    async def list_infos(self, *, owners: Sequence[str] | None, limit: int = 1000) -> list[CollectionInfo]:
        """Registry entries, by name; `owners` None: all of them."""
        client = await self._registry()
        scope = None
        if owners is not None:
            scope = models.Filter(
                should=[models.FieldCondition(key="owner", match=models.MatchValue(value=owner)) for owner in owners]
            )
        with translate_errors():
            points, _ = await client.scroll(self.registry, scroll_filter=scope, limit=limit, with_payload=True)
        infos = [CollectionInfo(**point.payload) for point in points if point.payload]
        return sorted(infos, key=lambda info: info.name)

    async def create(
        self, *, name: str, model: str, dimensions: int, distance: str, owner: str, chat_model: str | None = None
    ) -> CollectionInfo:
        """Create the collection and register it; 409 if the name is taken."""
        client = await self._registry()
        info = CollectionInfo(
            name=name,
            model=model,
            dimensions=dimensions,
            distance=distance,  # type: ignore[arg-type]  # checked by the request model
            owner=owner,
            created_at=int(time.time()),
            chat_model=chat_model,
        )
        with translate_errors():
            if await self.get_info(name) is not None:
                raise CollectionExists(f"A collection named '{name}' already exists.", param="name")
            if await client.collection_exists(self.physical(name)):
                # Left over from a creation that failed before registering it (or a deletion halfway): unowned.
                await client.delete_collection(self.physical(name))
            vectors = models.VectorParams(size=dimensions, distance=_DISTANCES[distance])
            await client.create_collection(self.physical(name), vectors_config=vectors)
            if self._remote:
                # A server indexes the owner tag (every query filters on it); the local mode has no indexes.
                await client.create_payload_index(
                    self.physical(name), field_name="_owner", field_schema=models.PayloadSchemaType.KEYWORD
                )
            entry = models.PointStruct(id=registry_id(name), vector=[1.0], payload=asdict(info))
            await client.upsert(self.registry, points=[entry], wait=True)
        return info

    async def drop(self, name: str) -> None:
        """Unregister first: a failure halfway leaves an unowned leftover, never a visible half-deleted one."""
        client = await self._registry()
        with translate_errors():
            await client.delete(
                self.registry, points_selector=models.PointIdsList(points=[registry_id(name)]), wait=True
            )
            await client.delete_collection(self.physical(name))

    async def count(self, name: str, *, scope: models.Filter) -> int:
        with translate_errors():
            return (await self.client.count(self.physical(name), count_filter=scope, exact=True)).count

    async def upsert(self, name: str, points: list[models.PointStruct]) -> None:
        with translate_errors():
            await self.client.upsert(self.physical(name), points=points, wait=True)

    async def search(
        self, name: str, *, vector: list[float], scope: models.Filter, limit: int, score_threshold: float | None
    ) -> list[models.ScoredPoint]:
        with translate_errors():
            answer = await self.client.query_points(
                self.physical(name),
                query=vector,
                query_filter=scope,
                limit=limit,
                score_threshold=score_threshold,
                with_payload=True,
            )
        return answer.points

    async def delete_points(self, name: str, *, scope: models.Filter) -> None:
        with translate_errors():
            await self.client.delete(
                self.physical(name), points_selector=models.FilterSelector(filter=scope), wait=True
            )

    async def retrieve(self, name: str, *, ids: list[str]) -> list[models.Record]:
        with translate_errors():
            return await self.client.retrieve(self.physical(name), ids=ids, with_payload=True)
