"""The /v1/models listing, built from the catalogue rather than asked of the model servers."""

from __future__ import annotations

from ..catalog import AliasSpec, ModelSpec


def model_card(spec: ModelSpec, *, created: int) -> dict[str, object]:
    """One model in OpenAI's shape, plus what a client needs to size its requests."""
    card: dict[str, object] = {
        "id": spec.name,
        "object": "model",
        "created": created,
        "owned_by": "citadel",
        "kind": spec.kind,
        "display_name": spec.display_name,
        "max_model_len": spec.max_model_len,
        "max_tokens": spec.max_tokens,
    }
    if spec.dimensions:
        card["dimensions"] = spec.dimensions
    return card


def alias_card(alias: AliasSpec, targets: list[ModelSpec], *, created: int) -> dict[str, object]:
    """An alias in the same shape, sized by the largest of `targets` (those this key may use, in order, at least
    one): a request that fits one of them can be served (docs/api.md "Model aliases and fallback")."""
    card: dict[str, object] = {
        "id": alias.name,
        "object": "model",
        "created": created,
        "owned_by": "citadel",
        "kind": alias.kind,
        "display_name": "Alias of " + ", ".join(spec.display_name for spec in targets),
        "max_model_len": max(spec.max_model_len for spec in targets),
        "max_tokens": max(spec.max_tokens for spec in targets),
        "alias_of": [spec.name for spec in targets],
    }
    if targets[0].dimensions:  # an embedding alias's targets share their dimensions (checked at load)
        card["dimensions"] = targets[0].dimensions
    return card
