"""A check's outcome, its OpenAI rate-limit headers, and the 429 it turns into (errors.RateLimited)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import RateLimited


@dataclass(frozen=True, slots=True)
class UsageCounters:
    """One limit's state for the headers."""

    limit: int
    remaining: int
    reset_s: float


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one check. `requests`/`tokens` are None for an unlimited dimension."""

    allowed: bool
    requests: UsageCounters | None = None
    tokens: UsageCounters | None = None
    retry_after: int | None = None  # whole seconds >= 1, only when refused
    limited_by: str | None = None  # "requests", "model_requests", "tokens" or "control_requests", when refused
    model: str | None = None
    charged_tokens: int = 0  # what check() counted against the tokens limit (0 when refused or unlimited)
    tokens_window: int | None = None  # window index of the charge, for settle()
    too_large: bool = False  # refused because the estimate alone exceeds the tokens limit

    def headers(self) -> dict[str, str]:
        return rate_limit_headers(self)

    def error(self) -> RateLimited:
        """The 429 for a refused decision."""
        if self.limited_by == "tokens":
            assert self.tokens is not None
            message = f"Rate limit reached for tokens (limit {self.tokens.limit}). Please try again later."
            if self.too_large:
                message = (
                    f"Request too large: its estimated tokens exceed this key's limit of {self.tokens.limit};"
                    " lower max_tokens or shorten the input."
                )
            error_type = "tokens"
        elif self.limited_by == "control_requests":
            message = (
                "Rate limit reached for control-plane calls (vectors, usage, sessions, feedback, models, admin)."
                " Please try again later."
            )
            error_type = "requests"
        elif self.limited_by == "model_requests":
            message = f"Rate limit reached for requests to model '{self.model}'. Please try again later."
            error_type = "requests"
        else:
            message = "Rate limit reached for requests. Please try again later."
            error_type = "requests"
        return RateLimited(message, headers=self.headers(), error_type=error_type)


@dataclass(slots=True)
class Settlement:
    """A correction of one tokens counter's charge: `delta` (actual - charged) for the window that was charged."""

    key: str  # the tokens counter (its name carries the key's hash tag)
    period_ms: int
    window: int  # the window index of the charge; -1: the current window when it is applied
    delta: int


def format_reset(seconds: float) -> str:
    """OpenAI's duration format: "0s", "1s", "1.5s", "6m0s", "1h2m3s"."""
    if seconds <= 0:
        return "0s"
    ms = math.ceil(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs = f"{ms // 1000}" if ms % 1000 == 0 else f"{ms / 1000:.3f}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """The `x-ratelimit-*` headers of a decision, plus Retry-After when it was refused."""
    headers: dict[str, str] = {}
    for name, counters in (("requests", decision.requests), ("tokens", decision.tokens)):
        if counters is not None:
            headers[f"x-ratelimit-limit-{name}"] = str(counters.limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(max(0, counters.remaining))
            headers[f"x-ratelimit-reset-{name}"] = format_reset(counters.reset_s)
    if not decision.allowed and decision.retry_after is not None:
        headers["Retry-After"] = str(decision.retry_after)
    return headers
