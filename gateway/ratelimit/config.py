"""Where a caller's limits come from: the key record, then the role default, then config; the token estimate."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import limits
from limits import RateLimitItem

from ..auth import Principal
from ..settings import RateLimitSettings

DEFAULT_ROLE_REQUESTS: dict[str, str | None] = {"admin": None, "user": "60/minute", "viewer": "60/minute"}
DEFAULT_ROLE_TOKENS: dict[str, str | None] = {"admin": None}
DEFAULT_ROLE_CONTROL: dict[str, str | None] = {"admin": None}


@dataclass(frozen=True)
class LimitConfig:
    """The limits from config (settings fields `rate_limit_*`); a None limit means unlimited."""

    requests_default: str | None = "60/minute"
    role_requests: Mapping[str, str | None] = field(default_factory=lambda: dict(DEFAULT_ROLE_REQUESTS))
    tokens_default: str | None = "100000/minute"
    role_tokens: Mapping[str, str | None] = field(default_factory=lambda: dict(DEFAULT_ROLE_TOKENS))
    model_requests_default: str | None = None
    model_requests: Mapping[str, str | None] = field(default_factory=dict)
    control_default: str | None = "300/minute"
    role_control: Mapping[str, str | None] = field(default_factory=lambda: dict(DEFAULT_ROLE_CONTROL))
    key_prefix: str = "citadel:rl"

    @classmethod
    def from_settings(cls, settings: RateLimitSettings) -> LimitConfig:
        """From the gateway's settings (`Settings.rate_limit`, CITADEL_RATE_LIMIT_*)."""
        return cls(
            requests_default=settings.requests_default,
            role_requests=settings.role_requests,
            tokens_default=settings.tokens_default,
            role_tokens=settings.role_tokens,
            model_requests_default=settings.model_requests_default,
            model_requests=settings.model_requests,
            control_default=settings.control_default,
            role_control=settings.role_control,
        )

    def validate(self) -> None:
        """Parse every limit string once, so a typo fails at startup (ValueError), not on a request."""
        strings = [self.requests_default, self.tokens_default, self.model_requests_default, self.control_default]
        strings += [*self.role_requests.values(), *self.role_tokens.values(), *self.model_requests.values()]
        strings += [*self.role_control.values()]
        for text in strings:
            if text is not None:
                limits.parse(text)


@dataclass(frozen=True, slots=True)
class LimitPlan:
    """The resolved limits of one caller for one model (None: unlimited)."""

    requests: RateLimitItem | None
    model_requests: RateLimitItem | None
    tokens: RateLimitItem | None


def _per_minute(value: int | None) -> RateLimitItem | None:
    return limits.RateLimitItemPerMinute(value) if value is not None else None


def _pick(role: str, role_map: Mapping[str, str | None], default: str | None) -> RateLimitItem | None:
    text = role_map.get(role, default)
    return limits.parse(text) if text is not None else None


def resolve_limits(config: LimitConfig, principal: Principal, model: str | None) -> LimitPlan:
    """The key record's limit, else the role default, else config; per-model: the model's entry, else default."""
    role = str(principal.role)
    requests = _per_minute(principal.requests_per_minute)
    if requests is None:
        requests = _pick(role, config.role_requests, config.requests_default)
    tokens = _per_minute(principal.tokens_per_minute)
    if tokens is None:
        tokens = _pick(role, config.role_tokens, config.tokens_default)
    model_requests = None
    if model is not None:
        text = config.model_requests.get(model, config.model_requests_default)
        model_requests = limits.parse(text) if text is not None else None
    return LimitPlan(requests=requests, model_requests=model_requests, tokens=tokens)


def resolve_control(config: LimitConfig, principal: Principal) -> RateLimitItem | None:
    """The caller's control-plane limit: the key record's, else the role default, else config."""
    control = _per_minute(principal.control_requests_per_minute)
    return control if control is not None else _pick(str(principal.role), config.role_control, config.control_default)


def estimate_tokens(*, text_chars: int, max_tokens: int | None, default_max_tokens: int = 256) -> int:
    """Tokens to charge up front: prompt characters / 4 (rounded up) plus the completion budget; >= 1."""
    completion = max_tokens if max_tokens is not None else default_max_tokens
    return max(1, math.ceil(text_chars / 4) + max(0, completion))
