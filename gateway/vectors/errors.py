"""The vector store's errors, in the gateway's one error family (rendered in the OpenAI shape)."""

from __future__ import annotations

from ..errors import APIError, InvalidRequest


class VectorStoreUnavailable(APIError):
    """Qdrant is unreachable, timed out, or the embedded store cannot be opened by this process."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "vector_store_unavailable"


class CollectionExists(InvalidRequest):
    status_code = 409
    default_code = "collection_exists"


class DimensionMismatch(InvalidRequest):
    default_code = "dimension_mismatch"
