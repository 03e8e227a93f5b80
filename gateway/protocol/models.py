"""The /v1/models listing, built from the catalogue rather than asked of the model servers."""

from __future__ import annotations

from ..catalog import ModelSpec


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
