"""Chat completions: the request fields the gateway accepts and forwards."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from .common import WIRE_CONFIG, SamplingFields
from .vectors import RetrievalOptions


class ChatMessage(BaseModel):
    model_config = WIRE_CONFIG

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: Annotated[str, Field(max_length=256)] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: Annotated[str, Field(max_length=256)] | None = None


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # Gateway extension (gateway/vectors/retrieval.py): search a vector collection and put the passages in the
    # prompt. Excluded from dumps, so it never reaches the model server.
    retrieval: Annotated[RetrievalOptions | None, Field(exclude=True)] = None
