"""Model aliases: which of an alias's targets serves a request, and who may call an alias (pure logic, no I/O).

An alias (config/models.yaml `aliases:`, checked by gateway/catalog.py) names an ordered list of models of one kind.
`choose_target` walks the list and takes the first target that passes four checks, in this order:

    allowed    the key's allow-list lets it use the target (through the alias or by the target's own name)
    available  the target has a replica in rotation
    saturated  the target's admission queue is not full (it would not take the request now)
    context    the request fits the target's context (`fits_context`, an estimate)

The first check a target fails is why it was skipped (`Skip`, a bounded metric label). The live checks are the
caller's callables (the admission gate, the upstream pool), so this module decides and never waits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from .catalog import AliasSpec, Catalog, ModelSpec
from .errors import APIError, InvalidRequest, ModelSaturated, PermissionDenied, UpstreamUnavailable

# Characters per token of a BPE tokenizer on English prose (OpenAI's and Llama's rule of thumb).
CHARS_PER_TOKEN = 4


class Skip(StrEnum):
    """Why a target was passed over; the values are metric label values (bounded)."""

    NOT_ALLOWED = "not_allowed"
    UNAVAILABLE = "unavailable"
    SATURATED = "saturated"
    CONTEXT = "context"


# What a message says of each reason (never a backend URL, never the request's text).
_REASON_TEXT = {
    Skip.NOT_ALLOWED: "not allowed for this key",
    Skip.UNAVAILABLE: "no replica available",
    Skip.SATURATED: "saturated",
    Skip.CONTEXT: "context too small for this request",
}


@dataclass(frozen=True, slots=True)
class AliasChoice:
    """The target that serves a request to `alias`, and the targets passed over before it (in order)."""

    alias: str
    target: ModelSpec
    skipped: tuple[tuple[str, Skip], ...] = ()

    @property
    def fell_back(self) -> bool:
        return bool(self.skipped)


def fits_context(spec: ModelSpec, *, prompt_chars: int, max_tokens: int | None) -> bool:
    """Whether a request plausibly fits `spec`'s context: ceil(prompt_chars / 4) prompt tokens plus the answer's
    `max_tokens` (1 when unset: vLLM then writes what room is left) at most `max_model_len`.

    Four characters per token is English prose; code and non-Latin scripts take more tokens per character, so the
    estimate errs toward trying a target: it skips only a target the request clearly overflows. A target that
    turns out too small still answers vLLM's own 400 (passed on), and that request falls back no further.
    """
    prompt_tokens = math.ceil(max(prompt_chars, 0) / CHARS_PER_TOKEN)
    answer_tokens = max_tokens if max_tokens is not None and max_tokens > 0 else 1
    return prompt_tokens + answer_tokens <= spec.max_model_len


def alias_allowed(principal_allowed: frozenset[str] | None, alias: AliasSpec) -> bool:
    """A key may call an alias when it has no allow-list, its list names the alias, or names one of its targets."""
    if principal_allowed is None or alias.name in principal_allowed:
        return True
    return any(target in principal_allowed for target in alias.targets)


def target_allowed(principal_allowed: frozenset[str] | None, alias: AliasSpec, target_name: str) -> bool:
    """Through an alias, a key may use a target when it has no allow-list, or its list names the alias or the target
    (naming an alias grants each of its targets, but only when called through the alias)."""
    return principal_allowed is None or alias.name in principal_allowed or target_name in principal_allowed


def allowed_targets(principal_allowed: frozenset[str] | None, alias: AliasSpec) -> tuple[str, ...]:
    """The alias's targets this key may reach through it, in the alias's order."""
    return tuple(name for name in alias.targets if target_allowed(principal_allowed, alias, name))


def known_model_names(catalog: Catalog) -> frozenset[str]:
    """Every name a request or an allow-list may use: the models and the aliases."""
    return frozenset(catalog.models) | frozenset(catalog.aliases)


def choose_target(
    alias: AliasSpec,
    catalog: Catalog,
    *,
    allowed: Callable[[str], bool],
    available: Callable[[str], bool],
    saturated: Callable[[str], bool],
    fits: Callable[[ModelSpec], bool],
    retry_after_s: int = 1,
) -> AliasChoice:
    """The first target that is allowed, available, not saturated and fits, with the ones skipped before it;
    raises the APIError that says why none can serve (`no_target_error`; `retry_after_s` for a saturated one)."""
    skipped: list[tuple[str, Skip]] = []
    for name in alias.targets:
        spec = catalog.get(name)
        if spec is None:  # the catalogue checks targets at load; a stale alias still never crashes a request
            skipped.append((name, Skip.UNAVAILABLE))
            continue
        reason = _first_failing(spec, allowed=allowed, available=available, saturated=saturated, fits=fits)
        if reason is None:
            return AliasChoice(alias=alias.name, target=spec, skipped=tuple(skipped))
        skipped.append((name, reason))
    raise no_target_error(alias, tuple(skipped), retry_after_s=retry_after_s)


def _first_failing(
    spec: ModelSpec,
    *,
    allowed: Callable[[str], bool],
    available: Callable[[str], bool],
    saturated: Callable[[str], bool],
    fits: Callable[[ModelSpec], bool],
) -> Skip | None:
    if not allowed(spec.name):
        return Skip.NOT_ALLOWED
    if not available(spec.name):
        return Skip.UNAVAILABLE
    if saturated(spec.name):
        return Skip.SATURATED
    if not fits(spec):
        return Skip.CONTEXT
    return None


def no_target_error(alias: AliasSpec, skipped: tuple[tuple[str, Skip], ...], *, retry_after_s: int = 1) -> APIError:
    """Why no target of `alias` can serve: 403 when the key may use none of them; else 503 when one was
    unavailable or saturated (ModelSaturated, with Retry-After, when any was saturated: a queue drains sooner than
    a dead replica comes back; else model_unavailable); else 400 (every target the key may use is too small)."""
    reasons = {reason for _, reason in skipped}
    if reasons <= {Skip.NOT_ALLOWED}:
        return PermissionDenied(
            f"This key may not use the model '{alias.name}' (an alias) nor any of its targets.",
            param="model",
            code="model_not_allowed",
        )
    detail = _describe(skipped)
    busy = f"No target of the model '{alias.name}' can take this request now ({detail}). Try again shortly."
    if Skip.SATURATED in reasons:
        return ModelSaturated(busy, retry_after_s=retry_after_s)
    if Skip.UNAVAILABLE in reasons:
        return UpstreamUnavailable(busy, param="model", code="model_unavailable")
    return InvalidRequest(
        f"This request does not fit the context of any target of the model '{alias.name}' ({detail}); "
        "shorten the prompt or lower max_tokens.",
        code="context_length_exceeded",
    )


def _describe(skipped: tuple[tuple[str, Skip], ...]) -> str:
    """Each target the key may use with its reason; the others only counted (their names are not the key's to know)."""
    shown = [f"{name}: {_REASON_TEXT[reason]}" for name, reason in skipped if reason is not Skip.NOT_ALLOWED]
    hidden = sum(1 for _, reason in skipped if reason is Skip.NOT_ALLOWED)
    if hidden:
        shown.append(f"{hidden} more this key may not use")
    return "; ".join(shown)
