"""Rate limiter pieces that need no Redis: headers, limit resolution, the token estimate, the 429."""

from __future__ import annotations

import uuid

import pytest

from gateway.auth import Principal, Role
from gateway.catalog import ModelSpec
from gateway.inference import completion_budget
from gateway.ratelimit import (
    Decision,
    LimitConfig,
    RateLimited,
    UsageCounters,
    estimate_tokens,
    format_reset,
    rate_limit_headers,
    resolve_limits,
)
from gateway.settings import RateLimitSettings
from tests.support.catalogs import chat_entry


def principal(role: Role = Role.USER, rpm: int | None = None, tpm: int | None = None) -> Principal:
    return Principal(key_id=uuid.uuid4(), name="k", role=role, requests_per_minute=rpm, tokens_per_minute=tpm)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-3, "0s"),
        (0.0004, "0.001s"),
        (0.5, "0.5s"),
        (1, "1s"),
        (1.25, "1.25s"),
        (59.999, "59.999s"),
        (60, "1m0s"),
        (90.5, "1m30.5s"),
        (360, "6m0s"),
        (3723, "1h2m3s"),
    ],
)
def test_format_reset_uses_openai_durations(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


def test_headers_of_an_allowed_decision() -> None:
    decision = Decision(
        allowed=True,
        requests=UsageCounters(limit=60, remaining=59, reset_s=60),
        tokens=UsageCounters(limit=1000, remaining=-5, reset_s=1.5),
    )
    assert rate_limit_headers(decision) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "0",  # never negative on the wire
        "x-ratelimit-reset-tokens": "1.5s",
    }


def test_unlimited_dimensions_have_no_headers() -> None:
    assert rate_limit_headers(Decision(allowed=True)) == {}


def test_refused_decision_gives_a_429_in_openai_shape_with_retry_after() -> None:
    decision = Decision(
        allowed=False,
        requests=UsageCounters(limit=2, remaining=0, reset_s=30),
        retry_after=7,
        limited_by="requests",
    )
    error = decision.error()
    assert isinstance(error, RateLimited)
    assert error.status_code == 429
    assert error.headers["Retry-After"] == "7"
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    body = error.body()["error"]
    assert isinstance(body, dict)
    assert body["type"] == "requests"
    assert body["code"] == "rate_limit_exceeded"
    response = error.to_response()
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"


def test_tokens_refusal_says_tokens() -> None:
    decision = Decision(
        allowed=False, tokens=UsageCounters(limit=10, remaining=0, reset_s=1), retry_after=1, limited_by="tokens"
    )
    assert decision.error().error_type == "tokens"


def test_key_record_beats_role_default_beats_config() -> None:
    config = LimitConfig(
        requests_default="5/minute",
        role_requests={"user": "20/minute", "admin": None},
        tokens_default="1000/hour",
        role_tokens={"viewer": "50/minute"},
    )
    # key record
    plan = resolve_limits(config, principal(Role.USER, rpm=7, tpm=70), None)
    assert plan.requests is not None and (plan.requests.amount, plan.requests.get_expiry()) == (7, 60)
    assert plan.tokens is not None and (plan.tokens.amount, plan.tokens.get_expiry()) == (70, 60)
    # role default
    plan = resolve_limits(config, principal(Role.USER), None)
    assert plan.requests is not None and plan.requests.amount == 20
    plan = resolve_limits(config, principal(Role.VIEWER), None)
    assert plan.tokens is not None and plan.tokens.amount == 50
    # a role mapped to None is unlimited, even though config has a default
    assert resolve_limits(config, principal(Role.ADMIN), None).requests is None
    # config, when the role has no entry
    plan = resolve_limits(config, principal(Role.VIEWER), None)
    assert plan.requests is not None and plan.requests.amount == 5
    plan = resolve_limits(config, principal(Role.USER), None)
    assert plan.tokens is not None and (plan.tokens.amount, plan.tokens.get_expiry()) == (1000, 3600)
    # the key record wins even for a role that is unlimited by default
    plan = resolve_limits(config, principal(Role.ADMIN, rpm=3), None)
    assert plan.requests is not None and plan.requests.amount == 3


def test_model_limit_from_map_then_default() -> None:
    config = LimitConfig(model_requests={"mixtral": "2/minute", "phi3": None}, model_requests_default="30/minute")
    user = principal()
    mixtral = resolve_limits(config, user, "mixtral").model_requests
    assert mixtral is not None and mixtral.amount == 2
    assert resolve_limits(config, user, "phi3").model_requests is None
    other = resolve_limits(config, user, "hermes").model_requests
    assert other is not None and other.amount == 30
    assert resolve_limits(config, user, None).model_requests is None
    assert resolve_limits(LimitConfig(), user, "hermes").model_requests is None


def test_bad_limit_strings_fail_at_construction() -> None:
    with pytest.raises(ValueError):
        LimitConfig(role_requests={"user": "sixty a minute"}).validate()


def test_from_settings_reads_rate_limit_fields() -> None:
    settings = RateLimitSettings(requests_default="9/minute", model_requests={"m": "1/second"})
    config = LimitConfig.from_settings(settings)
    assert config.requests_default == "9/minute"
    assert config.model_requests == {"m": "1/second"}
    assert config.tokens_default == LimitConfig().tokens_default


def test_estimate_tokens() -> None:
    assert estimate_tokens(text_chars=0, max_tokens=0) == 1
    assert estimate_tokens(text_chars=400, max_tokens=100) == 200
    assert estimate_tokens(text_chars=401, max_tokens=100) == 201
    assert estimate_tokens(text_chars=40, max_tokens=None, default_max_tokens=16) == 26


@pytest.mark.parametrize(
    ("endpoint", "data", "budget"),
    [
        ("chat", {"max_tokens": 100}, 100),
        ("chat", {"max_tokens": 100, "n": 4}, 400),
        ("chat", {}, 4096),  # no max_tokens: all the server may write (its context, not the model's max_tokens)
        ("completions", {"prompt": ["a"] * 50, "max_tokens": 10, "n": 4}, 2000),  # 50 prompts x 4 choices
        ("completions", {"prompt": [1, 2, 3], "max_tokens": 10}, 10),  # one prompt given as token ids
        ("completions", {"prompt": [[1], [2]], "max_tokens": 10, "best_of": 3, "n": 2}, 60),
        ("embeddings", {"input": ["a", "b"]}, 0),
    ],
)
def test_the_token_charge_covers_every_choice_and_prompt(endpoint: str, data: dict[str, object], budget: int) -> None:
    spec = ModelSpec.model_validate({"name": "m", **chat_entry("http://127.0.0.1:9", max_tokens=4096)})
    spec = spec.model_copy(update={"max_tokens": 2048})
    assert completion_budget(data, spec, endpoint) == budget  # type: ignore[arg-type]
