"""Properties of the limiter's arithmetic (hypothesis): what a request is charged up front (completion_budget, then
estimate_tokens) is never negative, grows with every knob that lets it generate more (`n`, `best_of`, the prompts of a
list, `max_tokens`), and is never below what the model server may write for it; the rate-limit headers say what
OpenAI's do, in its formats."""

from __future__ import annotations

import math
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.catalog import ModelSpec
from gateway.inference import completion_budget
from gateway.ratelimit import Decision, UsageCounters, estimate_tokens, format_reset, rate_limit_headers
from tests.support.catalogs import chat_entry

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None)


@st.composite
def specs(draw: st.DrawFn) -> ModelSpec:
    """A chat model whose `max_tokens` may be below its context (a setting may make it so)."""
    context = draw(st.integers(2, 40_000))
    entry = {**chat_entry("http://x"), "max_model_len": context, "max_tokens": draw(st.integers(1, context))}
    return ModelSpec(name="m", **entry)  # type: ignore[arg-type]


_PROMPT = st.one_of(
    st.text(max_size=5),
    st.lists(st.text(max_size=5), min_size=1, max_size=60),
    st.lists(st.integers(0, 50_000), min_size=1, max_size=5),
    st.lists(st.lists(st.integers(0, 50_000), min_size=1, max_size=3), min_size=1, max_size=60),
)


@st.composite
def requests(draw: st.DrawFn, spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    """A validated request as prepare() hands it over (fields within the model's and the server's bounds)."""
    endpoint = draw(st.sampled_from(["chat", "completions"]))
    tokens = st.integers(1, spec.max_tokens)
    data: dict[str, Any] = draw(st.fixed_dictionaries({}, optional={"max_tokens": tokens, "n": st.integers(1, 8)}))
    if endpoint == "chat":
        data.update(draw(st.fixed_dictionaries({}, optional={"max_completion_tokens": tokens})))
        data["messages"] = [{"role": "user", "content": "hi"}]
    else:
        data.update(draw(st.fixed_dictionaries({"prompt": _PROMPT}, optional={"best_of": st.integers(1, 8)})))
    return endpoint, data


def prompts(data: dict[str, Any]) -> int:
    """How many prompts a completions request holds: a list of texts or of token lists; one text or token list."""
    prompt = data.get("prompt")
    return len(prompt) if isinstance(prompt, list) and not isinstance(prompt[0], int) else 1


def can_write(data: dict[str, Any], spec: ModelSpec) -> int:
    """The most a model server (vLLM) may write for a request: per choice the length asked for (max_completion_tokens
    first) or, unset, the rest of its context after a prompt of at least one token; for every choice of every prompt."""
    room = spec.max_model_len - 1
    asked = data.get("max_completion_tokens") or data.get("max_tokens")
    per_choice = min(asked, room) if asked else room
    return per_choice * max(data.get("n") or 1, data.get("best_of") or 1) * prompts(data)


@SETTINGS
@given(data=st.data())
def test_the_charge_is_never_below_what_the_server_may_write(data: st.DataObject) -> None:
    spec = data.draw(specs())
    endpoint, request = data.draw(requests(spec))
    budget = completion_budget(request, spec, endpoint)  # type: ignore[arg-type]
    assert budget >= can_write(request, spec) >= 0


@SETTINGS
@given(data=st.data(), knob=st.sampled_from(["n", "best_of", "max_tokens", "max_completion_tokens", "prompt"]))
def test_the_charge_grows_with_every_knob(data: st.DataObject, knob: str) -> None:
    spec = data.draw(specs())
    endpoint, request = data.draw(requests(spec))
    before = completion_budget(request, spec, endpoint)  # type: ignore[arg-type]
    more = dict(request)
    if knob == "prompt":
        if not isinstance(request.get("prompt"), list) or isinstance(request["prompt"][0], int):
            return
        more["prompt"] = [*request["prompt"], request["prompt"][0]]
    elif knob in ("n", "best_of"):
        more[knob] = (request.get(knob) or 1) + data.draw(st.integers(1, 4))
    else:
        if knob not in request or request[knob] >= spec.max_tokens:
            return
        more[knob] = data.draw(st.integers(request[knob] + 1, spec.max_tokens))
    assert completion_budget(more, spec, endpoint) >= before  # type: ignore[arg-type]


@SETTINGS
@given(data=st.data())
def test_embeddings_generate_nothing(data: st.DataObject) -> None:
    spec = data.draw(specs())
    _, request = data.draw(requests(spec))
    assert completion_budget(request, spec, "embeddings") == 0


@SETTINGS
@given(chars=st.integers(0, 10**9), more=st.integers(0, 10**6), budget=st.one_of(st.none(), st.integers(-10, 10**9)))
def test_the_up_front_estimate_is_positive_and_monotone(chars: int, more: int, budget: int | None) -> None:
    estimate = estimate_tokens(text_chars=chars, max_tokens=budget)
    assert estimate >= 1
    assert estimate >= math.ceil(chars / 4) + max(0, budget or 0)
    assert estimate_tokens(text_chars=chars + more, max_tokens=budget) >= estimate
    if budget is not None and budget >= 0:
        assert estimate_tokens(text_chars=chars, max_tokens=budget + more) >= estimate


_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(\d+(?:\.\d{1,3})?)s$")


@SETTINGS
@given(seconds=st.floats(-10, 10**7, allow_nan=False))
def test_reset_durations_are_openai_durations_rounded_up_to_the_millisecond(seconds: float) -> None:
    text = format_reset(seconds)
    found = _DURATION.match(text)
    assert found, text
    hours, minutes, secs = (float(part) if part else 0.0 for part in found.groups())
    total = hours * 3600 + minutes * 60 + secs
    assert total >= max(0.0, seconds) - 1e-6
    assert total <= max(0.0, seconds) + 0.001 + 1e-6


@SETTINGS
@given(
    limit=st.integers(1, 10**9),
    used=st.integers(-(10**9), 2 * 10**9),
    reset=st.floats(0, 10**5),
    retry=st.integers(1, 3600),
    allowed=st.booleans(),
)
def test_rate_limit_headers_are_whole_non_negative_numbers(
    limit: int, used: int, reset: float, retry: int, allowed: bool
) -> None:
    counters = UsageCounters(limit=limit, remaining=limit - used, reset_s=reset)
    decision = Decision(allowed=allowed, requests=counters, tokens=counters, retry_after=None if allowed else retry)
    headers = rate_limit_headers(decision)
    for name in ("requests", "tokens"):
        assert headers[f"x-ratelimit-limit-{name}"] == str(limit)
        remaining = int(headers[f"x-ratelimit-remaining-{name}"])
        assert 0 <= remaining <= limit or used < 0
        assert _DURATION.match(headers[f"x-ratelimit-reset-{name}"])
    assert ("Retry-After" in headers) is (not allowed)
    if not allowed:
        error = Decision(
            allowed=False, requests=counters, tokens=counters, retry_after=retry, limited_by="tokens", model="m"
        ).error()
        assert error.status_code == 429 and int(error.headers["Retry-After"]) >= 1
        assert set(error.body()["error"]) == {"message", "type", "param", "code"}


def test_the_budget_by_example() -> None:
    """The properties above, on numbers a reader can check."""
    spec = ModelSpec(name="m", **{**chat_entry("http://x"), "max_model_len": 100, "max_tokens": 10})  # type: ignore[arg-type]
    assert completion_budget({"max_tokens": 7, "n": 2}, spec, "chat") == 14
    assert completion_budget({"prompt": ["a", "b", "c"], "max_tokens": 5, "best_of": 2}, spec, "completions") == 30
    assert completion_budget({"prompt": [1, 2, 3]}, spec, "completions") >= 99  # unset: the rest of the context
