"""Legacy text completions: the request fields the gateway accepts and forwards."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from .common import WIRE_CONFIG, ModelName, Penalty, Stop, StreamOptions

Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(BaseModel):
    model_config = WIRE_CONFIG

    model: ModelName
    prompt: Prompt
    suffix: str | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool | None = None
    stop: Stop | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: Annotated[dict[str, float], Field(max_length=300)] | None = None
    seed: int | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
