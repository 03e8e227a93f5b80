"""A vector store round trip through the gateway: a temporary collection created, three documents upserted, a
search ranked, the collection removed (always, also after a failure)."""

from __future__ import annotations

from typing import Any

from .client import Exchange, describe, fresh_nonce
from .report import Target
from .state import RunState

VECTOR_DOCUMENTS = [
    ("doc-1", "The gateway checks every API key and records each request in the audit log."),
    ("doc-2", "To bake bread, mix flour, water, salt and yeast, let the dough rise, then bake it hot."),
    ("doc-3", "Prometheus scrapes metrics every fifteen seconds and evaluates the alert rules."),
]
VECTOR_QUERY, VECTOR_EXPECTED = "How do I make a loaf of bread?", "doc-2"


async def vector_roundtrip(run: RunState, embedding: list[dict[str, Any]]) -> None:
    run.progress.phase("vector store round trip")
    title = "vector store: create, upsert 3, search, delete"
    if not embedding:
        run.progress.advance(4)
        run.targets.append(
            Target(
                id="vectors.roundtrip",
                area="vectors",
                title=title,
                status="skip",
                reason="no embedding model listed for this key",
            )
        )
        return
    model = str(embedding[0]["id"])
    collection = f"citadel-validate-{fresh_nonce()}"
    base = f"/v1/vectors/collections/{collection}"
    steps: dict[str, float] = {}
    failure: str | None = None
    top: str | None = None
    created_maybe = False
    done = 0

    async def step(name: str, method: str, path: str, body: Any = None) -> Exchange:
        nonlocal done
        exchange = await run.client.call(method, path, body=body)
        done += 1
        run.progress.advance()
        if exchange.ok:
            steps[name] = exchange.ms
        return exchange

    try:
        create = await step("create", "POST", "/v1/vectors/collections", {"name": collection, "model": model})
        # No answer, or a 5xx: the collection may exist all the same, so the delete is tried.
        created_maybe = create.ok or create.status is None or create.status >= 500
        if not create.ok:
            failure = f"create: {describe(create)}"
            return
        documents = [{"id": doc_id, "text": text} for doc_id, text in VECTOR_DOCUMENTS]
        upsert = await step("upsert", "POST", f"{base}/documents", {"documents": documents})
        if not upsert.ok:
            failure = f"upsert: {describe(upsert)}"
            return
        search = await step("search", "POST", f"{base}/search", {"query": VECTOR_QUERY, "top_k": 3})
        hits = search.body.get("data") if search.ok and isinstance(search.body, dict) else None
        if not search.ok or not hits:
            failure = f"search: {describe(search) if not search.ok else 'no documents found'}"
            return
        top = str(hits[0].get("id")) if isinstance(hits[0], dict) else None
    finally:
        if created_maybe:
            delete = await step("delete", "DELETE", base)
            if not delete.ok:
                left = f"delete: {describe(delete)}: remove collection {collection} by hand"
                failure = f"{failure}; {left}" if failure else left
        run.progress.advance(4 - done)
        _vector_target(run, title, model, collection, steps, failure, top)


def _vector_target(
    run: RunState,
    title: str,
    model: str,
    collection: str,
    steps: dict[str, float],
    failure: str | None,
    top: str | None,
) -> None:
    total = sum(steps.values())
    timings = ", ".join(f"{step} {ms:.0f} ms" for step, ms in steps.items())
    ranking = f"top hit {top} ({'as expected' if top == VECTOR_EXPECTED else f'expected {VECTOR_EXPECTED}'})"
    run.targets.append(
        Target(
            id="vectors.roundtrip",
            area="vectors",
            title=title,
            status="fail" if failure else "pass",
            reason=failure or f"{timings}; {ranking}; temporary collection removed",
            measured=f"{total:.0f} ms in all" if steps else "-",
            requirement="every step succeeds, collection removed",
            value=round(total, 2) if steps else None,
            unit="ms",
            details={
                "model": model,
                "collection": collection,
                "steps_ms": {k: round(v, 2) for k, v in steps.items()},
                "top_hit": top,
                "expected_top_hit": VECTOR_EXPECTED,
            },
        )
    )
