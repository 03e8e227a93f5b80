"""Vector benchmark: documents per second through upsert (embedding included) and search latency p50/p95.

Run from the repo root: `python -m bench.vectors [--documents N] [--batch B] [--searches M] [--embed-url URL]`.
The embedding model is the real all-MiniLM-L6-v2 on vLLM: the one at --embed-url (default: the local stack's,
http://127.0.0.1:$CITADEL_EMBED_PORT or 11404) when it answers, else one started here from .venv-vllm as
`make run` starts it (about a minute). Without vLLM it falls back to the fake upstream (constant vectors,
no model cost) and says so: then the figures are the gateway's and Qdrant's share only.
The gateway runs in this process (one worker, no database, the bootstrap admin key) with the embedded
Qdrant store in a temporary folder, or the Qdrant server at QDRANT_URL.
  upsert        N synthetic documents (20-40 words each) in requests of B documents, one request at a time
  embed only    the same documents straight to the embedding server, same batches (the model's own cost)
  vectors given the same documents upserted with those vectors (no embedding: the gateway's and Qdrant's share)
  search text   M searches by a question (one embedding + one Qdrant query each), sequential
  search vector M searches by a vector (Qdrant only), sequential
Prints a table and writes bench/results/vectors-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from gateway.app import create_app
from gateway.catalog import load_catalog
from gateway.settings import Settings
from services.stack import resolve_weights, vllm_command, vllm_env
from tests.conftest import free_port
from tests.support import processes
from tests.support.catalogs import chat_entry, write_models_file

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-admin-key-0123456789"
WORDS = (  # noqa: SIM905  (a word list reads better as text)
    "river mountain engine market signal garden winter protocol harvest library circuit orbit tide "
    "volcano bread coffee football python language server memory vector index search ocean forest music "
    "painting history science planet battery network window castle bridge village storm desert island "
    "doctor"
).split()


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def documents(count: int, *, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {"id": f"doc-{i}", "text": " ".join(rng.choices(WORDS, k=rng.randint(20, 40))), "metadata": {"n": i % 10}}
        for i in range(count)
    ]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def start_embedding_server(stack: ExitStack, workdir: Path) -> str | None:
    """The local profile's embedding server (all-MiniLM-L6-v2 on vLLM), on a free port; None without vLLM."""
    vllm_python = ROOT / ".venv-vllm" / "bin" / "python"
    if not vllm_python.exists():
        return None
    catalog = load_catalog(ROOT / "config" / "models.yaml", profile="local", env=dict(os.environ))
    server = next(s for s in catalog.servers if "embed" in s.serves).model_copy(update={"port": free_port()})
    weights = resolve_weights(server.weights, vllm_python=vllm_python, cache=workdir)
    progress(f"starting the embedding server on port {server.port} (about a minute)")
    process = processes.start(
        vllm_command(server, weights=weights, vllm_python=vllm_python),
        env=vllm_env(),
        cwd=ROOT,
        log=workdir / "embed.log",
        health_url=f"{server.url}/health",
        timeout_s=600,
    )
    stack.callback(processes.stop, process)
    return server.url


async def timed(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    response = await client.post(path, json=body)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text[:300]
    return elapsed


async def run(args: argparse.Namespace, embed_url: str, real: bool, workdir: Path) -> dict[str, Any]:
    models = {
        "chat": chat_entry(embed_url),
        "embed": {**chat_entry(embed_url, max_tokens=256), "kind": "embedding", "dimensions": 384,
                  "upstream_model": "embed" if real else "upstream-emb"},
    }  # fmt: skip
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        admin_key=SecretStr(KEY),
        config_path=write_models_file(workdir / "models.yaml", models),
        audit_spool_dir=workdir / "spool",
        qdrant_path=workdir / "qdrant",
        max_embedding_inputs=args.batch,
        cache_enabled=False,
    )
    docs = documents(args.documents)
    batches = [docs[i : i + args.batch] for i in range(0, len(docs), args.batch)]
    app = create_app(settings)
    results: dict[str, Any] = {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {KEY}"}
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://gw", headers=headers, timeout=300) as gw,
            httpx.AsyncClient(base_url=embed_url, timeout=300) as upstream,
        ):
            name = f"bench-{int(time.time())}"
            assert (await gw.post("/v1/vectors/collections", json={"name": name})).status_code == 200
            documents_path = f"/v1/vectors/collections/{name}/documents"
            embed_model = models["embed"]["upstream_model"]
            # Warm-up: the model server's first batches are slower (allocations, caches).
            for batch in batches[:2]:
                await timed(upstream, "/v1/embeddings", {"model": embed_model, "input": [d["text"] for d in batch]})
            await timed(gw, documents_path, {"documents": docs[:2]})

            progress("embedding only: the batches straight to the embedding server")
            embedded: list[list[float]] = []
            started = time.perf_counter()
            for batch in batches:
                answer = await upstream.post(
                    "/v1/embeddings", json={"model": embed_model, "input": [d["text"] for d in batch]}
                )
                embedded.extend(item["embedding"] for item in answer.json()["data"])
            results["embed_only_docs_per_s"] = len(docs) / (time.perf_counter() - started)

            progress(f"upsert: {len(docs)} documents in requests of {args.batch}")
            started = time.perf_counter()
            for batch in batches:
                await timed(gw, documents_path, {"documents": batch})
            results["upsert_docs_per_s"] = len(docs) / (time.perf_counter() - started)

            progress("upsert with the vectors given (no embedding): the gateway's and Qdrant's share")
            with_vectors = [
                {**doc, "id": f"v-{doc['id']}", "vector": vector} for doc, vector in zip(docs, embedded, strict=True)
            ]
            started = time.perf_counter()
            for i in range(0, len(with_vectors), args.batch):
                await timed(gw, documents_path, {"documents": with_vectors[i : i + args.batch]})
            results["upsert_given_vectors_docs_per_s"] = len(docs) / (time.perf_counter() - started)

            rng = random.Random(11)
            questions = [" ".join(rng.choices(WORDS, k=8)) for _ in range(args.searches)]
            progress(f"search: {args.searches} by text, {args.searches} by vector")
            path = f"/v1/vectors/collections/{name}/search"
            text_s = [await timed(gw, path, {"query": q, "top_k": 5}) for q in questions]
            vectors = [[rng.uniform(-1, 1) for _ in range(384)] for _ in range(args.searches)]
            vector_s = [await timed(gw, path, {"vector": v, "top_k": 5}) for v in vectors]
            for label, values in (("search_text", text_s), ("search_vector", vector_s)):
                results[f"{label}_p50_ms"] = statistics.median(values) * 1000
                results[f"{label}_p95_ms"] = percentile(values, 95) * 1000
            await gw.delete(f"/v1/vectors/collections/{name}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64, help="documents per upsert request (and embedding call)")
    parser.add_argument("--searches", type=int, default=200)
    default_embed = f"http://127.0.0.1:{os.environ.get('CITADEL_EMBED_PORT', '11404')}"
    parser.add_argument("--embed-url", default=default_embed)
    parser.add_argument("--no-start", action="store_true", help="never start an embedding server here")
    args = parser.parse_args(argv)
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="citadel-bench-vectors-") as tmp:
        workdir = Path(tmp)
        embed_url, real, note = args.embed_url, True, "real all-MiniLM-L6-v2 (vLLM) at --embed-url"
        if not answers(embed_url):
            started = None if args.no_start else start_embedding_server(stack, workdir)
            if started is not None:
                embed_url, note = started, "real all-MiniLM-L6-v2 (vLLM), started by this benchmark"
            else:
                port = free_port()
                fake = processes.start(
                    [sys.executable, "-m", "services.fake_upstream", "--port", str(port)],
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                    cwd=ROOT,
                    log=workdir / "fake.log",
                    health_url=f"http://127.0.0.1:{port}/health",
                )
                stack.callback(processes.stop, fake)
                embed_url, real = f"http://127.0.0.1:{port}", False
                note = "FAKE upstream (no vLLM here): constant vectors, no model cost; gateway + Qdrant only"
        progress(f"embeddings: {note}")
        results = asyncio.run(run(args, embed_url, real, workdir))
    store = os.environ.get("QDRANT_URL") or "embedded local mode"
    config = {"documents": args.documents, "batch": args.batch, "searches": args.searches}
    print(f"\nVector benchmark ({note}; Qdrant: {store}; {config})")
    print(f"  upsert (embedding included)   {results['upsert_docs_per_s']:8.1f} documents/s")
    print(f"  embedding only (no gateway)   {results['embed_only_docs_per_s']:8.1f} documents/s")
    print(f"  upsert, vectors given         {results['upsert_given_vectors_docs_per_s']:8.1f} documents/s")
    for label in ("search_text", "search_vector"):
        p50, p95 = results[f"{label}_p50_ms"], results[f"{label}_p95_ms"]
        print(f"  {label.replace('_', ' by '):<29} p50 {p50:7.2f} ms   p95 {p95:7.2f} ms")
    out = ROOT / "bench" / "results" / f"vectors-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"embeddings": note, "qdrant": store, **config, **results}, indent=2))
    print(f"  written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
