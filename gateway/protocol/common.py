"""Shared request parsing: bytes in, a validated model out, or a 400 that names the bad field."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InvalidRequest

T = TypeVar("T", bound=BaseModel)

# Strict: "0.5" is not a number and 1 is not a string; a wrong type is a 400, not a silent coercion.
# Unknown fields are dropped, so only what a model declares reaches vLLM.
WIRE_CONFIG = ConfigDict(extra="ignore", strict=True)

ModelName = Annotated[str, Field(min_length=1, max_length=256)]
Stop = str | Annotated[list[str], Field(max_length=4)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
# top_k: -1 (or 0) means all tokens; no vocabulary here is larger than this.
MAX_TOP_K = 1_000_000
MAX_STOP_TOKEN_IDS = 64
TokenId = Annotated[int, Field(ge=0, lt=2**31)]


class StreamOptions(BaseModel):
    model_config = WIRE_CONFIG

    include_usage: bool | None = None


class SamplingFields(BaseModel):
    """What chat and text completions share: the model, sampling, streaming and stop conditions."""

    model_config = WIRE_CONFIG

    model: ModelName
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: Stop | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: Annotated[dict[str, float], Field(max_length=300)] | None = None
    seed: int | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    # vLLM's sampling extensions (docs/api.md "Tool calling, structured outputs and sampling extras"). min_tokens
    # is also checked against max_tokens and the model's limit (gateway/inference.py).
    top_k: Annotated[int, Field(ge=-1, le=MAX_TOP_K)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=2.0)] | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    skip_special_tokens: bool | None = None


def encode_for_upstream(data: Any) -> bytes:
    """The JSON sent on to a model server. The one place a value JSON can carry but the encoder cannot (an integer
    past 64 bits, in any field, typed or free-form) becomes the client's 400 instead of a crash."""
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError:
        raise InvalidRequest("A number in the request is out of range: integers must fit in 64 bits.") from None


def parse_request(model: type[T], body: bytes) -> T:
    """Validate a JSON request body against `model`; every failure becomes an OpenAI-style 400."""
    if not body.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    if body.lstrip()[:1] != b"{":
        # Also catches malformed JSON early with a clearer message than the validator's.
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        # RFC 8259 JSON only, checked by the parser every later step uses (the cache key, the re-encoding):
        # pydantic alone would take NaN, Infinity, 1e400 and lone surrogates, which those steps cannot carry.
        # A check, not a second parse to use: pydantic's own JSON validation is faster than validating
        # orjson's dict (5.4 against 8.2 us for a 1 KB chat body), and orjson reads integers past 64 bits
        # as floats, silently, which would let them past the checks that refuse them.
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc.msg} (at character {exc.pos}).") from None
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        if first["type"] == "json_invalid":
            raise InvalidRequest("The request body is not valid JSON.") from None
        param = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidRequest(f"Invalid value for '{param}': {first['msg']}.", param=param) from None
