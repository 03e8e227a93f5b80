"""What the fuzz tier (test_fuzz_api.py) sends: schemathesis's cases from the OpenAPI schema, steered, plus requests
written the way a client writes them; and the check that every error is in OpenAI's shape.

Steering (`steer`) changes cases, it never filters them out:
- a generation length between MAX_GENERATED_TOKENS and 4,096 is brought under MAX_GENERATED_TOKENS, and a missing one
  is set: the demo model writes ~60 tokens/s on 2 cores, and a chat without `max_tokens` may write the whole
  context (2,048 tokens, half a minute). Values over a model's limit are kept: the gateway (or vLLM, past the demo
  server's context) must refuse them with a 400;
- four cases in five are aimed at things that exist (a served model, the seeded collections, documents, sessions,
  rated requests), so they get past the 404 and reach the model servers, the vector store and the database.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import schemathesis
from hypothesis import strategies as st

MAX_GENERATED_TOKENS = 16
CHAT_MODELS = ("mixtral", "hermes", "openchat", "phi3")
MODELS = (*CHAT_MODELS, "embed")
# Made by the tier's fixtures before the cases run (test_fuzz_api.py `seeded`); "absent" never exists.
COLLECTIONS = ("fuzz-user", "fuzz-shared", "model-phi3", "absent")
DOCUMENT = "doc-1"
# New for each run (a gateway may be fuzzed twice): the conversation sessions of the user's and the admin's chats,
# and the X-Request-ID of one chat of each, to rate.
_RUN = uuid.uuid4().hex[:8]
SESSIONS = (str(uuid.uuid4()), str(uuid.uuid4()))
RATED = {"user": f"fuzz-rated-user-{_RUN}", "admin": f"fuzz-rated-admin-{_RUN}"}
ERROR_FIELDS = {"message", "type", "param", "code"}
GENERATING = ("/v1/chat/completions", "/v1/completions")


def steer(case: Any, *, aim: int) -> Any:
    """Bound the generation and aim the case (`aim` 0: leave it as generated); see the module docstring."""
    path = case.operation.path
    parameters = case.path_parameters if case.path_parameters is not None else {}
    if aim:
        for name, choices in (
            ("name", COLLECTIONS),
            ("doc_id", (DOCUMENT,)),
            ("model", MODELS),
            ("session_id", SESSIONS),
        ):
            if name in parameters:
                parameters[name] = choices[aim % len(choices)]
    body = case.body
    if not isinstance(body, dict):
        return case
    if aim and path in GENERATING:
        body["model"] = CHAT_MODELS[aim % len(CHAT_MODELS)]
    elif aim and path == "/v1/embeddings":
        body["model"] = "embed"
    elif aim and path == "/v1/feedback":
        body["request_id"] = list(RATED.values())[aim % len(RATED)]
    if path in GENERATING:
        asked = [name for name in ("max_tokens", "max_completion_tokens") if type(body.get(name)) is int]
        for name in asked:
            if MAX_GENERATED_TOKENS < body[name] < 4096:
                body[name] = 1 + body[name] % MAX_GENERATED_TOKENS
        if not asked:
            body["max_tokens"] = MAX_GENERATED_TOKENS
    return case


# Requests as a client writes them (any text, every option the gateway forwards): a schema's random bodies mostly
# stop at a 400 (one stray field out of range), these reach the model servers, streams and all.
_TEXT = st.text(max_size=40)
_SOME_TEXT = st.text(min_size=1, max_size=40)
_MAX_TOKENS = st.integers(1, MAX_GENERATED_TOKENS)
_TOKENS = st.lists(st.integers(0, 100_000), min_size=1, max_size=8)
_SAMPLING = {
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "n": st.integers(1, 4),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0.01, 1),
    "seed": st.integers(-(2**63), 2**63 - 1),
    "stop": st.one_of(_SOME_TEXT, st.lists(_SOME_TEXT, max_size=4)),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "logit_bias": st.dictionaries(st.integers(0, 40_000).map(str), st.floats(-100, 100), max_size=3),
    "user": _TEXT,
}
_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant"]), "content": _TEXT}
)
_METADATA = st.dictionaries(
    st.sampled_from(["topic", "year", "tags", "draft"]),
    st.one_of(
        _TEXT,
        st.integers(-(2**53), 2**53),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.lists(_TEXT),
    ),
    max_size=3,
)
_FILTER = st.dictionaries(
    st.sampled_from(["topic", "year", "tags"]),
    st.one_of(
        _TEXT,
        st.integers(),
        st.lists(_TEXT, min_size=1, max_size=3),
        st.dictionaries(
            st.sampled_from(["gt", "gte", "lt", "lte"]), st.floats(allow_nan=False, allow_infinity=False), min_size=1
        ),
    ),
    max_size=2,
)
PLAUSIBLE = {
    "/v1/chat/completions": st.fixed_dictionaries(
        {
            "model": st.sampled_from(CHAT_MODELS),
            "messages": st.lists(_MESSAGE, min_size=1, max_size=4),
            "max_tokens": _MAX_TOKENS,
        },
        optional={
            **_SAMPLING,
            "logprobs": st.booleans(),
            "top_logprobs": st.integers(0, 5),
            "response_format": st.just({"type": "json_object"}),
            "retrieval": st.fixed_dictionaries(
                {"collection": st.sampled_from(COLLECTIONS)}, optional={"query": _SOME_TEXT, "filter": _FILTER}
            ),
        },
    ),
    "/v1/completions": st.fixed_dictionaries(
        {
            "model": st.sampled_from(CHAT_MODELS),
            "prompt": st.one_of(
                _SOME_TEXT, st.lists(_SOME_TEXT, min_size=1, max_size=3), _TOKENS, st.lists(_TOKENS, max_size=2)
            ),
            "max_tokens": _MAX_TOKENS,
        },
        optional={**_SAMPLING, "echo": st.booleans(), "logprobs": st.integers(0, 5), "best_of": st.integers(1, 4)},
    ),
    "/v1/embeddings": st.fixed_dictionaries(
        {
            "model": st.just("embed"),
            "input": st.one_of(_SOME_TEXT, st.lists(_SOME_TEXT, min_size=1, max_size=4), _TOKENS),
        },
        optional={"encoding_format": st.sampled_from(["float", "base64"]), "user": _TEXT},
    ),
    "/v1/vectors/collections/{name}/documents": st.fixed_dictionaries(
        {
            "documents": st.lists(
                st.fixed_dictionaries(
                    {"text": _SOME_TEXT},
                    optional={"id": st.sampled_from([DOCUMENT, "doc-2", "doc:3"]), "metadata": _METADATA},
                ),
                min_size=1,
                max_size=4,
            )
        }
    ),
    "/v1/vectors/collections/{name}/search": st.fixed_dictionaries(
        {"query": _SOME_TEXT},
        optional={"top_k": st.integers(1, 10), "score_threshold": st.floats(-1, 1), "filter": _FILTER},
    ),
}


def strategy(operation: Any) -> Any:
    """Every case for one operation: schemathesis's (valid and invalid, steered) and, for the routes that have them,
    plausible requests, half and half."""
    modes = [schemathesis.GenerationMode.POSITIVE]
    if len(operation.body) or any(True for _ in operation.iter_parameters()):
        modes.append(schemathesis.GenerationMode.NEGATIVE)
    cases = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in modes))
    aims = st.integers(0, 19).map(lambda n: n if n % 5 else 0)  # aimed four times in five
    cases = st.tuples(cases, aims).map(lambda drawn: steer(drawn[0], aim=drawn[1]))
    plausible = PLAUSIBLE.get(operation.path)
    if plausible is None:
        return cases
    return st.one_of(cases, st.tuples(plausible, aims).map(lambda drawn: _case(operation, *drawn)))


def _case(operation: Any, body: dict[str, Any], aim: int) -> Any:
    path_parameters = {"name": COLLECTIONS[aim % len(COLLECTIONS)]} if "{name}" in operation.path else None
    # Some chats are kept in a conversation session (which the sessions routes then find).
    session = operation.path == "/v1/chat/completions" and aim % 2
    headers = {"X-Session-ID": SESSIONS[aim % len(SESSIONS)]} if session else None
    return operation.Case(body=body, media_type="application/json", path_parameters=path_parameters, headers=headers)


def assert_openai_error(status: int, content: bytes) -> None:
    """A non-2xx answer's body is `{"error": {"message", "type", "param", "code"}}`."""
    if status < 400:
        return
    text = content[:300].decode(errors="replace")
    try:
        error = json.loads(content)["error"]
    except (ValueError, KeyError, TypeError):
        raise AssertionError(f"{status} not in OpenAI's error shape: {text!r}") from None
    assert isinstance(error, dict) and set(error) == ERROR_FIELDS, text
    assert isinstance(error["message"], str) and isinstance(error["type"], str), text
    assert error["param"] is None or isinstance(error["param"], str), text
