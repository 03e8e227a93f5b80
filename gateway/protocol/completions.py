"""Legacy text completions: the request fields the gateway accepts and forwards."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .common import SamplingFields
from .tools import StructuredOutputs

Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingFields):
    prompt: Prompt
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool | None = None
    # vLLM's structured outputs (json, regex, choice, grammar, json_object): exactly one constraint.
    structured_outputs: StructuredOutputs | None = None
