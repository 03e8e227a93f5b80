"""Embeddings: the request fields the gateway accepts and forwards."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from .common import WIRE_CONFIG, ModelName

EmbeddingInput = (
    Annotated[str, Field(min_length=1)]
    | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    | Annotated[list[int], Field(min_length=1)]
    | Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)]
)


class EmbeddingRequest(BaseModel):
    model_config = WIRE_CONFIG

    model: ModelName
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None

    def input_count(self) -> int:
        """How many texts (or token lists) this request embeds."""
        if isinstance(self.input, str):
            return 1
        if self.input and isinstance(self.input[0], int):
            return 1
        return len(self.input)
