"""Texts to vectors through the catalogue's embedding model, over the gateway's own upstream pool.

The call goes through InferenceService.forward, so replicas, retries, breakers and the upstream error
translation are the same as for POST /v1/embeddings; batches are at most `max_embedding_inputs` texts.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..catalog import ModelSpec
from ..context import Usage
from ..errors import InvalidRequest, ModelNotFound, UpstreamError
from ..inference import InferenceService, Prepared


class Embedder:
    """Embeds texts with a named embedding model; counts the tokens it used in `usage`."""

    def __init__(self, *, inference: InferenceService) -> None:
        self.inference = inference

    def default_model(self) -> str | None:
        """The catalogue's first embedding model (new collections use it unless they name one)."""
        return next((spec.name for spec in self.inference.catalog.models.values() if spec.kind == "embedding"), None)

    def spec(self, model: str) -> ModelSpec:
        spec = self.inference.catalog.get(model)
        if spec is None:
            raise ModelNotFound(model)
        if spec.kind != "embedding":
            raise InvalidRequest(f"The model '{model}' is not an embedding model.", param="model")
        return spec

    async def embed(self, texts: list[str], *, model: str, request_id: str, usage: dict[str, Any]) -> list[list[float]]:
        """One vector per text, in order; texts past the model's context are embedded from their start."""
        spec = self.spec(model)
        size = self.inference.settings.max_embedding_inputs
        vectors: list[list[float]] = []
        for start in range(0, len(texts), size):
            vectors.extend(await self._batch(spec, texts[start : start + size], request_id=request_id, usage=usage))
        return vectors

    async def _batch(
        self, spec: ModelSpec, texts: list[str], *, request_id: str, usage: dict[str, Any]
    ) -> list[list[float]]:
        # truncate_prompt_tokens=-1 (vLLM): cut a long text to the model's context instead of refusing it.
        payload = orjson.dumps({"model": spec.upstream_name, "input": texts, "truncate_prompt_tokens": -1})
        prepared = Prepared(endpoint="embeddings", spec=spec, requested_name=spec.name, payload=payload, stream=False)
        used = Usage()
        response = await self.inference.forward(prepared, request_id=request_id, usage=used)
        usage["prompt_tokens"] = usage.get("prompt_tokens", 0) + (used.prompt_tokens or 0)
        usage["total_tokens"] = usage.get("total_tokens", 0) + (used.total_tokens or 0)
        try:
            data = orjson.loads(bytes(response.body))["data"]
            ordered = sorted(data, key=lambda item: item["index"])
            vectors = [[float(x) for x in item["embedding"]] for item in ordered]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UpstreamError(f"The model '{spec.name}' sent embeddings in an unexpected shape.") from None
        if len(vectors) != len(texts):
            raise UpstreamError(f"The model '{spec.name}' sent {len(vectors)} embeddings for {len(texts)} texts.")
        return vectors
