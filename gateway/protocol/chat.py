"""Chat completions: the request fields the gateway accepts and forwards."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from .common import WIRE_CONFIG, SamplingFields
from .tools import (
    MAX_TOOL_CALLS,
    MAX_TOOLS,
    ChatTool,
    MessageContent,
    ResponseFormat,
    StructuredOutputs,
    ToolCall,
    ToolChoice,
)
from .vectors import RetrievalOptions


class ChatMessage(BaseModel):
    model_config = WIRE_CONFIG

    role: Literal["system", "developer", "user", "assistant", "tool"]
    # Text, or a list of text parts; image, audio and file parts are refused (gateway/protocol/tools.py).
    content: MessageContent | None = None
    name: Annotated[str, Field(max_length=256)] | None = None
    # An assistant's earlier tool calls, and (role "tool") the call a result answers.
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_TOOL_CALLS)] | None = None
    tool_call_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None

    @model_validator(mode="after")
    def _tool_fields_fit_the_role(self) -> ChatMessage:
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a 'tool' message needs the 'tool_call_id' of the call it answers")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only 'assistant' messages carry 'tool_calls'")
        return self


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[ChatTool], Field(min_length=1, max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # vLLM's structured outputs (json, regex, choice, grammar, json_object): exactly one constraint.
    structured_outputs: StructuredOutputs | None = None
    # Gateway extension (gateway/vectors/retrieval.py): search a vector collection and put the passages in the
    # prompt. Excluded from dumps, so it never reaches the model server.
    retrieval: Annotated[RetrievalOptions | None, Field(exclude=True)] = None
