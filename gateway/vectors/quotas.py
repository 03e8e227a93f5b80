"""Storage quotas of a key's own vector collections: how many collections, and how many documents across them.

Resolution, per quota: the key record (`vector_quota_collections` / `vector_quota_documents`), else the
setting (CITADEL_VECTOR_QUOTA_*), which admin keys are exempt from. Bytes are bounded through documents:
every document is at most CITADEL_VECTOR_MAX_DOCUMENT_BYTES of text and metadata (service.py checks it).

Counting is exact but not transactional: two uploads racing past the last free places can both pass, so a
key may end up over its quota by at most one request's documents. Shared and model collections belong to
no key and count for nobody.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..auth import Principal
from ..errors import NotFound, QuotaExceeded
from ..settings import Settings
from .filters import owned
from .store import QdrantStore


@dataclass(frozen=True, slots=True)
class StorageQuota:
    """One key's quotas (None: unlimited)."""

    collections: int | None
    documents: int | None

    @classmethod
    def of(cls, principal: Principal, settings: Settings) -> StorageQuota:
        exempt = principal.is_admin
        return cls(
            collections=principal.vector_quota_collections
            if principal.vector_quota_collections is not None
            else (None if exempt else settings.vector.quota_collections),
            documents=principal.vector_quota_documents
            if principal.vector_quota_documents is not None
            else (None if exempt else settings.vector.quota_documents),
        )


async def check_new_collection(store: QdrantStore, principal: Principal, quota: StorageQuota) -> None:
    """Raises QuotaExceeded when the key already owns `quota.collections` collections."""
    if quota.collections is None:
        return
    owned_now = await store.list_infos(owners=[str(principal.key_id)], limit=quota.collections + 1)
    if len(owned_now) >= quota.collections:
        raise QuotaExceeded(
            f"This key owns {len(owned_now)} vector collections, its quota is {quota.collections}: "
            "delete one first, or ask an admin for a larger quota.",
            param="name",
        )


async def check_new_documents(store: QdrantStore, principal: Principal, quota: StorageQuota, *, adding: int) -> None:
    """Raises QuotaExceeded when `adding` more documents would take the key past `quota.documents`, counting
    the documents of every collection it owns."""
    if quota.documents is None or adding <= 0:
        return
    owner = str(principal.key_id)
    infos = await store.list_infos(owners=[owner])
    counts = await asyncio.gather(*(_count(store, info.name, owner) for info in infos))
    held = sum(counts)
    if held + adding > quota.documents:
        raise QuotaExceeded(
            f"This key stores {held} vector documents; {adding} more would pass its quota of {quota.documents}. "
            "Delete documents first, or ask an admin for a larger quota.",
            param="documents",
        )


async def _count(store: QdrantStore, name: str, owner: str) -> int:
    try:
        return await store.count(name, scope=owned(owner))
    except NotFound:  # deleted meanwhile
        return 0
