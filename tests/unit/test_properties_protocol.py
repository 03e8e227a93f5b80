"""Properties of request parsing (hypothesis): whatever a client sends, parsing gives a validated model or a 400, and
what goes on to the model server is the request as validated, or a 400; never another exception (a 500).

Inputs: any bytes; any JSON text (NaN, Infinity, numbers of any size and precision, lone surrogates, deep nesting);
and requests close to valid ones, with any JSON value in any declared field, through the whole preparation of the
inference routes (InferenceService.prepare: parse, model, bounds, the re-encoding for the upstream).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from gateway.auth import Principal, Role
from gateway.catalog import Catalog, ModelSpec
from gateway.errors import APIError, InvalidRequest
from gateway.inference import InferenceService, Prepared
from gateway.protocol.admin import KeyCreate
from gateway.protocol.chat import ChatCompletionRequest
from gateway.protocol.common import encode_for_upstream, parse_request
from gateway.protocol.completions import CompletionRequest
from gateway.protocol.embeddings import EmbeddingRequest
from gateway.protocol.feedback import FeedbackCreate
from gateway.protocol.vectors import (
    CollectionCreate,
    DeleteDocumentsRequest,
    RetrievalOptions,
    SearchRequest,
    UpsertRequest,
)
from tests.conftest import make_settings
from tests.support.catalogs import chat_entry

MODELS: list[type[BaseModel]] = [
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    CollectionCreate,
    UpsertRequest,
    SearchRequest,
    DeleteDocumentsRequest,
    RetrievalOptions,
    FeedbackCreate,
    KeyCreate,
]
# Repeatable (derandomized, no example database) and a few seconds in all; HYPOTHESIS_PROFILE is not needed.
SETTINGS = settings(
    max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)

# Numbers JSON can carry and Python cannot always pass on: past 64 bits, past a double, 400 digits, -0, 1e-400.
_NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**64 + 2),
    st.integers(min_value=-(2**64) - 2, max_value=-(2**63) + 2),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([10**400, -(10**400), 1e308, -0.0, 5e-324]),
)
_STRINGS = st.one_of(st.text(), st.text(alphabet=st.sampled_from('\x00\ud800\udfff\u2028\ufeffa{}"\\')))
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), _NUMBERS, _STRINGS),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_STRINGS, inner, max_size=4)),
    max_leaves=20,
)


def _json_text(value: Any) -> bytes:
    """JSON as a client might write it: Python's encoder writes NaN and Infinity, and big numbers as digits."""
    return json.dumps(value, allow_nan=True).encode("utf-8", errors="surrogatepass")


def _parsed_or_400(model: type[BaseModel], body: bytes) -> BaseModel | None:
    try:
        return parse_request(model, body)
    except InvalidRequest as error:
        assert error.status_code == 400
        assert error.body()["error"]["type"] == "invalid_request_error"
        return None


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
@SETTINGS
@given(body=st.binary(max_size=200))
def test_any_bytes_parse_or_are_a_400(model: type[BaseModel], body: bytes) -> None:
    _parsed_or_400(model, body)


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
@SETTINGS
@given(value=JSON_VALUES)
def test_any_json_value_parses_or_is_a_400(model: type[BaseModel], value: Any) -> None:
    _parsed_or_400(model, _json_text(value))


def test_deep_nesting_is_a_400_not_a_recursion_error() -> None:
    for body in (b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"{" * 10_000):
        for model in MODELS:
            assert _parsed_or_400(model, body) is None


@SETTINGS
@given(value=JSON_VALUES)
def test_the_upstream_encoding_round_trips_or_is_a_400(value: Any) -> None:
    """What parses (so JSON without NaN or Infinity) is sent on unchanged, or refused as a 400 (past 64 bits)."""
    try:
        data = orjson.loads(_json_text(value))
    except orjson.JSONDecodeError:
        return  # not JSON that parse_request lets through
    try:
        encoded = encode_for_upstream(data)
    except InvalidRequest as error:
        assert error.status_code == 400
        return
    assert orjson.loads(encoded) == data


# ---- through the whole preparation of a request ---------------------------------------------------------------

CALLER = Principal(key_id=uuid.uuid4(), name="p", role=Role.USER)
LIMITED = Principal(key_id=uuid.uuid4(), name="q", role=Role.USER, allowed_models=frozenset({"chat"}))
_ANY = st.one_of(JSON_VALUES, _NUMBERS)


def _mostly(plain: Any, odd: Any) -> Any:
    """`plain` four times in five, else `odd` (st.one_of would pick each half the time)."""
    return st.integers(0, 4).flatmap(lambda n: odd if n == 0 else plain)


# Mostly values of a plausible type, so that requests get past parsing to the bounds and the re-encoding.
_PLAIN = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(0, 5),
    st.floats(0, 1),
    st.sampled_from(["", "a", "stop"]),
    st.lists(st.integers(0, 5), max_size=3),
    st.just({"include_usage": True}),
)
_VALUE = _mostly(_PLAIN, _ANY)
_WORDS = st.text(min_size=1, max_size=8)
_TEXT = _mostly(_WORDS, _ANY)
_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]), "content": _TEXT}
)
_MESSAGES = st.lists(_MESSAGE, min_size=1, max_size=3)
_TOKEN_LISTS = st.lists(st.lists(_NUMBERS, min_size=1, max_size=3), min_size=1, max_size=3)
_FIELDS: dict[str, dict[str, Any]] = {
    "chat": {"messages": _mostly(_MESSAGES, _ANY)},
    "completions": {"prompt": st.one_of(_TEXT, st.lists(_TEXT, min_size=1, max_size=3), _TOKEN_LISTS)},
    "embeddings": {"input": st.one_of(_TEXT, st.lists(_TEXT, min_size=1, max_size=3), _TOKEN_LISTS)},
}
_OPTIONAL = sorted(
    {
        name
        for model in (ChatCompletionRequest, CompletionRequest, EmbeddingRequest)
        for name in model.model_fields
        if name not in ("model", "messages", "prompt", "input")
    }
)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> InferenceService:
    chat = ModelSpec(name="chat", **{**chat_entry("http://x", max_tokens=64), "max_model_len": 128})  # type: ignore[arg-type]
    embed = ModelSpec(name="embed", **{**chat_entry("http://x"), "kind": "embedding", "dimensions": 8})  # type: ignore[arg-type]
    catalog = Catalog(models={"chat": chat, "embed": embed}, servers=[])
    settings_ = make_settings(Path(tmp_path_factory.mktemp("properties")) / "models.yaml", max_n=4)
    return InferenceService(settings=settings_, catalog=catalog, pool=None)  # type: ignore[arg-type]


def _requests(endpoint: str) -> Any:
    """A request with its required fields and up to three others, each of any value."""
    served = "embed" if endpoint == "embeddings" else "chat"
    model = _mostly(st.just(served), st.sampled_from(["chat", "embed", "absent", ""]))
    required = st.fixed_dictionaries({"model": model, **_FIELDS[endpoint]})
    others = st.dictionaries(st.sampled_from(_OPTIONAL), _VALUE, max_size=3)
    return st.tuples(required, others).map(lambda drawn: {**drawn[0], **drawn[1]})


@pytest.mark.parametrize("endpoint", ["chat", "completions", "embeddings"])
@settings(SETTINGS, max_examples=120)
@given(data=st.data())
def test_preparing_any_near_valid_request_gives_a_payload_or_a_4xx(
    service: InferenceService, endpoint: str, data: st.DataObject
) -> None:
    body = _json_text(data.draw(_requests(endpoint)))
    principal = data.draw(st.sampled_from([CALLER, LIMITED]))
    try:
        prepared = service.prepare(service.parse(endpoint, body), principal=principal)  # type: ignore[arg-type]
    except APIError as error:
        assert 400 <= error.status_code < 500, error.message
        return
    assert isinstance(prepared, Prepared)
    sent = orjson.loads(prepared.payload)
    assert sent["model"] == prepared.spec.upstream_name or sent["model"] == prepared.spec.name
    assert "retrieval" not in sent  # a gateway extension never reaches the model server
    assert prepared.completion_budget >= 0
