"""`citadel backup` and `citadel restore` (subprocesses, as an operator runs them): a round trip through a real
PostgreSQL and the embedded Qdrant store that brings keys, audit rows, sessions and vectors back, and the
refusals (a corrupt or truncated backup, data already there, a store in use, an unreachable database).

No Qdrant server can be had here (no package ships one, no image can be pulled), so the server path (snapshot,
download, upload) runs against a stand-in that speaks the few REST calls it makes; what a real server does
with a snapshot is Qdrant's own business.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, redirect_stderr, redirect_stdout
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from qdrant_client import QdrantClient, models
from sqlalchemy.engine import make_url

from gateway.backup.archive import write_manifest
from gateway.cli import main
from gateway.store.db import asyncpg_dsn
from services.postgres import LocalPostgres
from tests.conftest import free_port
from tests.integration.test_sessions import stored
from tests.integration.test_vectors import TOPICS, call, make_collection, unit, vector_gateway
from tests.support.postgres import fresh_database

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "bk_"
# The test's own settings only: never the developer's DATABASE_URL, Qdrant or .env (cwd is a temporary folder).
_OWN = ("DATABASE_URL", "CITADEL_DATABASE_URL", "QDRANT_URL", "CITADEL_QDRANT_URL", "QDRANT_API_KEY",
        "CITADEL_QDRANT_API_KEY", "CITADEL_QDRANT_PATH", "CITADEL_QDRANT_PREFIX", "CITADEL_PG_BIN_DIR")  # fmt: skip


async def citadel(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {name: value for name, value in os.environ.items() if name not in _OWN}
    environment.update(PYTHONPATH=str(ROOT), **env)
    argv = [sys.executable, "-m", "gateway", *args]
    return await asyncio.to_thread(
        subprocess.run, argv, env=environment, cwd=cwd, capture_output=True, text=True, timeout=180, check=False
    )


async def citadel_here(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The same command in this process (a thread: it runs asyncio itself), for the quick checks: a process
    costs seconds of imports. Its exceptions would fail the test, as a traceback would in a process."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        for name in _OWN:
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        patch.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err):
            code = await asyncio.to_thread(main, list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def one_line_failure(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """A failure: non-zero, no traceback, and a `citadel: ...` line saying each of `expected`."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("citadel: ")]
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


async def row_counts(url: str) -> dict[str, int]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        tables = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'llm'")
        return {
            t["tablename"]: await connection.fetchval(f'SELECT count(*) FROM llm."{t["tablename"]}"') for t in tables
        }
    finally:
        await connection.close()


@asynccontextmanager
async def new_database_url(postgres_url: str) -> AsyncIterator[str]:
    """The URL of a database that does not exist yet (restore creates it); dropped afterwards."""
    name = f"restored_{uuid.uuid4().hex[:8]}"
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(postgres_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def manifest_of(archive: Path) -> dict[str, Any]:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        return json.load(member)  # type: ignore[no-any-return]


async def test_round_trip_brings_keys_audit_sessions_and_vectors_back(
    tmp_path: Path, postgres_url: str, fake_upstream_url: str
) -> None:
    qdrant = tmp_path / "qdrant"
    store = {"CITADEL_QDRANT_PATH": str(qdrant), "CITADEL_QDRANT_PREFIX": PREFIX}
    archive = tmp_path / "nightly.tar"
    session_id = str(uuid.uuid4())
    async with fresh_database(postgres_url, prefix="backup_source") as source:
        async with vector_gateway(
            tmp_path / "before", source, fake_upstream_url, qdrant_url=None, qdrant_path=qdrant, qdrant_prefix=PREFIX
        ) as gw:
            created = await gw.create_key(name="kept", role="user")
            key, key_id = str(created["key"]), str(created["id"])
            body = {"model": "chat", "messages": [{"role": "user", "content": "remember me"}]}
            chat_headers = gw.headers(key, **{"X-Session-ID": session_id})
            assert (await gw.client.post("/v1/chat/completions", json=body, headers=chat_headers)).status_code == 200
            conversation = await stored(gw, key, session_id, 2)
            await make_collection(gw, "handbook", key)
            upserted = await call(gw, "POST", "/collections/handbook/documents", key, json={"documents": TOPICS})
            assert upserted.status_code == 200, upserted.text
        before = await row_counts(source)  # the gateway has flushed its audit rows on the way out
        assert before["api_keys"] == 1 and before["sessions"] == 1 and before["session_messages"] == 2
        assert before["audit_log"] >= 4  # the key's creation, the chat, the collection, the upsert

        backup = await citadel(tmp_path, "backup", str(archive), DATABASE_URL=source, **store)
        assert backup.returncode == 0, backup.stderr
        assert "postgres:   table llm.audit_log" in backup.stdout and "backup written" in backup.stdout
    # Everything gone: the source database is dropped, the embedded store deleted.
    shutil.rmtree(qdrant)
    manifest = manifest_of(archive)
    assert manifest["format"] == "citadel-backup" and manifest["gateway_version"]
    assert manifest["alembic_revision"] == manifest["postgres"]["alembic_revision"] is not None
    assert manifest["postgres"]["rows"] == before
    assert {c["name"]: c["points"] for c in manifest["qdrant"]["collections"]}["handbook"] == len(TOPICS)
    collections = ["_registry", "handbook", "model-chat", "model-other"]  # the registry, ours, one per chat model
    assert set(manifest["files"]) == {"postgres/llm.dump", *(f"qdrant/{name}.jsonl" for name in collections)}
    assert all(len(entry["sha256"]) == 64 and entry["size"] > 0 for entry in manifest["files"].values())

    async with new_database_url(postgres_url) as target:
        restored = await citadel(tmp_path, "restore", str(archive), DATABASE_URL=target, **store)
        assert restored.returncode == 0, restored.stderr
        assert "database restored_" in restored.stdout and "nothing to migrate" in restored.stdout
        assert await row_counts(target) == before

        async with vector_gateway(
            tmp_path / "after", target, fake_upstream_url, qdrant_url=None, qdrant_path=qdrant, qdrant_prefix=PREFIX
        ) as gw:
            assert (await gw.client.get("/v1/models", headers=gw.headers(key))).status_code == 200  # the key works
            session = await gw.client.get(f"/v1/sessions/{session_id}", headers=gw.headers(key))
            assert session.status_code == 200 and session.json()["messages"] == conversation
            audit = await gw.client.get(f"/admin/audit?key_id={key_id}&kind=api", headers=gw.headers())
            assert {row["endpoint"] for row in audit.json()["data"]} >= {"/v1/chat/completions"}
            found = await call(gw, "POST", "/collections/handbook/search", key, json={"vector": unit(0), "top_k": 2})
            assert [hit["id"] for hit in found.json()["data"]] == ["cats", "dogs"]
            assert found.json()["data"][0]["text"] == "Cats purr."

        # Again, over what is there now: refused without --force, done with it.
        again = await citadel_here(tmp_path, "restore", str(archive), DATABASE_URL=target, **store)
        one_line_failure(again, "already holds data", "--force")
        vectors_only = await citadel_here(tmp_path, "restore", str(archive), "--only", "vectors", **store)
        one_line_failure(vectors_only, "already holds documents", f"{PREFIX}handbook", "--force")
        forced = await citadel_here(tmp_path, "restore", str(archive), "--force", DATABASE_URL=target, **store)
        assert forced.returncode == 0, forced.stderr
        counts = await row_counts(target)
        assert counts["api_keys"] == 1 and counts["session_messages"] == 2


async def test_a_damaged_backup_is_refused_before_anything_changes(tmp_path: Path, postgres_url: str) -> None:
    async with fresh_database(postgres_url, prefix="backup_damaged") as source:
        folder = tmp_path / "backup"
        made = await citadel_here(tmp_path, "backup", str(folder), "--only", "database", DATABASE_URL=source)
        assert made.returncode == 0, made.stderr
        archive = tmp_path / "backup.tar.gz"
        packed = await citadel_here(tmp_path, "backup", str(archive), "--only", "database", DATABASE_URL=source)
        assert packed.returncode == 0, packed.stderr
        assert oct(archive.stat().st_mode & 0o777) == "0o600" and oct(folder.stat().st_mode & 0o777) == "0o700"

        checked = await citadel_here(tmp_path, "restore", str(archive), "--verify-only")
        assert checked.returncode == 0 and "intact" in checked.stdout, checked.stderr

        dump = folder / "postgres" / "llm.dump"
        data = bytearray(dump.read_bytes())
        data[len(data) // 2] ^= 0xFF
        dump.write_bytes(bytes(data))
        corrupt = await citadel(tmp_path, "restore", str(folder), DATABASE_URL=source)
        one_line_failure(corrupt, "corrupt", "postgres/llm.dump", "checksum")

        truncated = tmp_path / "truncated.tar.gz"
        truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
        one_line_failure(await citadel_here(tmp_path, "restore", str(truncated)), "not a readable backup archive")

        (folder / "manifest.json").write_text("{not json")
        one_line_failure(await citadel_here(tmp_path, "restore", str(folder)), "manifest.json is not valid JSON")
        one_line_failure(await citadel_here(tmp_path, "restore", str(tmp_path / "missing.tar")), "no such backup")
        one_line_failure(
            await citadel_here(tmp_path, "backup", str(folder), DATABASE_URL=source),
            "already exists",
            "never overwrites",
        )


async def test_expected_failures_are_one_line(tmp_path: Path, postgres_url: str) -> None:
    dead = f"postgresql://nobody:secret@127.0.0.1:{free_port()}/citadel_ai"
    one_line_failure(
        await citadel(tmp_path, "backup", "x.tar", "--only", "database", DATABASE_URL=dead),
        "cannot reach the server",
    )
    assert not [name for name in os.listdir(tmp_path) if "x.tar" in name]  # nothing half-written is left
    unset = await citadel_here(tmp_path, "backup", "--only", "database")
    assert unset.returncode == 2 and "DATABASE_URL is not set" in one_line_failure(unset)

    qdrant = tmp_path / "qdrant"
    holder = QdrantClient(path=str(qdrant))  # as a running gateway holds the embedded store
    try:
        busy = await citadel_here(tmp_path, "backup", "v.tar", "--only", "vectors", CITADEL_QDRANT_PATH=str(qdrant))
        one_line_failure(busy, "in use by another process", "--only database")
    finally:
        holder.close()
    empty = await citadel_here(
        tmp_path, "backup", "v.tar", "--only", "vectors", CITADEL_QDRANT_PATH=str(tmp_path / "none")
    )
    assert empty.returncode == 0 and "no collections to back up" in empty.stdout, empty.stderr
    assert not (tmp_path / "none").exists()  # a backup creates no store

    bad = await citadel_here(tmp_path, "backup", "--only", "vectors", CITADEL_QDRANT_PREFIX="Not A Prefix")
    assert bad.returncode == 2 and "CITADEL_QDRANT_PREFIX" in one_line_failure(bad)

    # A snapshot backup needs a server to come back into.
    server_section = {"mode": "snapshot", "source": "server", "prefix": PREFIX, "collections": []}
    folder = tmp_path / "snapshots"
    (folder / "qdrant").mkdir(parents=True)
    write_manifest(folder, {"created_at": "now", "gateway_version": "0", "postgres": None, "qdrant": server_section})
    nowhere = await citadel_here(tmp_path, "restore", str(folder), CITADEL_QDRANT_PATH=str(qdrant))
    one_line_failure(nowhere, "only a Qdrant server can restore", "QDRANT_URL")
    database_only = await citadel_here(tmp_path, "restore", str(folder), "--only", "database")
    one_line_failure(database_only, "nothing to restore")


async def test_without_database_url_the_database_of_make_run_is_used(
    tmp_path: Path, postgres_server: LocalPostgres | None
) -> None:
    if postgres_server is None:
        pytest.skip("DATABASE_URL names the test server: there is no embedded one like `make run`'s")
    cache = tmp_path / ".cache" / "citadel"
    cache.mkdir(parents=True)
    (cache / "postgres.password").write_text(postgres_server.password + "\n")
    made = await citadel_here(
        tmp_path, "backup", "b.tar", "--only", "database", CITADEL_POSTGRES_PORT=str(postgres_server.port)
    )
    assert made.returncode == 0, made.stderr
    assert "the embedded PostgreSQL of `make run`" in made.stdout and "database citadel_ai" in made.stdout


# ---- the Qdrant server path, against a stand-in --------------------------------------------------------------


class FakeQdrant:
    """The REST calls of a snapshot backup and restore; a collection's snapshot is its points as JSON."""

    def __init__(self) -> None:
        self.collections: dict[str, dict[str, Any]] = {}
        self.snapshots: dict[str, bytes] = {}
        self.uploads: list[dict[str, str]] = []
        self.indexes: list[tuple[str, str]] = []
        self.ghosts: list[str] = []  # listed, then gone (deleted while a backup runs)
        self.app = FastAPI()
        app = self.app

        def ok(result: Any) -> dict[str, Any]:
            return {"result": result, "status": "ok", "time": 0.0}

        def missing(name: str) -> Response:
            body = {"status": {"error": f"Not found: Collection `{name}` doesn't exist!"}, "time": 0.0}
            return Response(json.dumps(body), status_code=404, media_type="application/json")

        @app.get("/collections")
        def listing() -> dict[str, Any]:
            return ok({"collections": [{"name": name} for name in [*self.collections, *self.ghosts]]})

        @app.get("/collections/{name}/exists")
        def exists(name: str) -> dict[str, Any]:
            return ok({"exists": name in self.collections})

        @app.delete("/collections/{name}")
        def drop(name: str) -> dict[str, Any]:
            return ok(self.collections.pop(name, None) is not None)

        @app.put("/collections/{name}")
        def create(name: str) -> dict[str, Any]:
            self.collections[name] = {}
            return ok(True)

        @app.put("/collections/{name}/index")
        async def index(name: str, request: Request) -> dict[str, Any]:
            self.indexes.append((name, (await request.json())["field_name"]))
            return ok({"operation_id": 1, "status": "completed"})

        @app.put("/collections/{name}/points")
        async def upsert(name: str, request: Request) -> dict[str, Any]:
            for point in (await request.json())["points"]:
                self.collections[name][str(point["id"])] = point["payload"]
            return ok({"operation_id": 1, "status": "completed"})

        @app.post("/collections/{name}/points/count", response_model=None)
        def count(name: str) -> dict[str, Any] | Response:
            return ok({"count": len(self.collections[name])}) if name in self.collections else missing(name)

        @app.post("/collections/{name}/points/scroll")
        def scroll(name: str) -> dict[str, Any]:
            points = [{"id": key, "payload": payload} for key, payload in self.collections[name].items()]
            return ok({"points": points, "next_page_offset": None})

        @app.post("/collections/{name}/points/delete")
        async def delete_points(name: str, request: Request) -> dict[str, Any]:
            for point in (await request.json())["points"]:
                self.collections[name].pop(point, None)
            return ok({"operation_id": 1, "status": "completed"})

        @app.post("/collections/{name}/snapshots", response_model=None)
        def snapshot(name: str) -> dict[str, Any] | Response:
            if name not in self.collections:
                return missing(name)
            data = json.dumps(self.collections[name]).encode()
            snap = f"{name}-{len(self.snapshots)}.snapshot"
            self.snapshots[snap] = data
            return ok({"name": snap, "size": len(data), "checksum": hashlib.sha256(data).hexdigest()})

        @app.get("/collections/{name}/snapshots/{snap}")
        def download(name: str, snap: str) -> Response:
            return Response(self.snapshots[snap], media_type="application/octet-stream")

        @app.delete("/collections/{name}/snapshots/{snap}")
        def forget(name: str, snap: str) -> dict[str, Any]:
            return ok(self.snapshots.pop(snap, None) is not None)

        @app.post("/collections/{name}/snapshots/upload")
        async def upload(name: str, request: Request) -> Response:
            # The multipart body by hand (python-multipart is not installed): its one part is the snapshot.
            head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
            parts = BytesParser().parsebytes(head + await request.body()).get_payload()
            assert isinstance(parts, list) and parts[0].get_param("name", header="content-disposition") == "snapshot"
            data = parts[0].get_payload(decode=True)
            self.uploads.append({"name": name, **request.query_params})
            if request.query_params.get("checksum") != hashlib.sha256(data).hexdigest():
                body = {"status": {"error": "Checksum mismatch"}, "time": 0.0}
                return Response(json.dumps(body), status_code=400, media_type="application/json")
            self.collections[name] = json.loads(data)
            return Response(json.dumps(ok(True)), media_type="application/json")


@contextmanager
def serving(fake: FakeQdrant) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            threading.Event().wait(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


async def test_snapshots_of_a_qdrant_server_round_trip(tmp_path: Path) -> None:
    fake = FakeQdrant()
    registry = {"a": {"name": "docs"}, "b": {"name": "gone"}}  # "gone": deleted while the backup ran
    fake.collections = {f"{PREFIX}_registry": registry, f"{PREFIX}docs": {"1": {"text": "hello"}}, "other": {"x": {}}}
    fake.ghosts = [f"{PREFIX}gone"]
    with serving(fake) as url:
        env = {"QDRANT_URL": url, "CITADEL_QDRANT_PREFIX": PREFIX}
        archive = tmp_path / "vectors.tar"
        made = await citadel_here(tmp_path, "backup", str(archive), "--only", "vectors", **env)
        assert made.returncode == 0, made.stderr
        assert fake.snapshots == {}  # each snapshot is removed from the server once downloaded
        section = manifest_of(archive)["qdrant"]
        assert section["mode"] == "snapshot" and section["prefix"] == PREFIX
        assert [(c["name"], c["points"]) for c in section["collections"]] == [("_registry", 2), ("docs", 1)]

        assert f"{PREFIX}gone: deleted meanwhile, skipped" in made.stdout
        fake.collections, fake.ghosts = {f"{PREFIX}docs": {"9": {"text": "newer"}}, f"{PREFIX}extra": {}}, []
        refused = await citadel_here(tmp_path, "restore", str(archive), **env)
        one_line_failure(refused, "already holds documents", f"{PREFIX}docs", "--force")

        # Into another gateway's prefix: the collections are renamed.
        renamed = await citadel_here(tmp_path, "restore", str(archive), **{**env, "CITADEL_QDRANT_PREFIX": "two_"})
        assert renamed.returncode == 0, renamed.stderr
        assert fake.collections["two_docs"] == {"1": {"text": "hello"}}
        assert fake.collections["two__registry"] == {"a": {"name": "docs"}}  # the stale entry is pruned
        assert {u["priority"] for u in fake.uploads} == {"snapshot"}

        forced = await citadel_here(tmp_path, "restore", str(archive), "--force", **env)
        assert forced.returncode == 0, forced.stderr
        assert fake.collections[f"{PREFIX}docs"] == {"1": {"text": "hello"}}
        assert f"{PREFIX}extra" not in fake.collections  # not in the backup: removed
        # A backup of the embedded store restores into a server too (from `make run` to compose's Qdrant).
        local = tmp_path / "embedded"
        store = QdrantClient(path=str(local))
        try:
            store.create_collection(
                f"{PREFIX}kb", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT)
            )
            points = [models.PointStruct(id=n, vector=[1.0, n], payload={"_owner": "k"}) for n in range(300)]
            store.upsert(f"{PREFIX}kb", points=points)  # more than one batch
        finally:
            store.close()
        jsonl = tmp_path / "embedded.tar"
        exported = await citadel_here(
            tmp_path,
            "backup",
            str(jsonl),
            "--only",
            "vectors",
            CITADEL_QDRANT_PATH=str(local),
            CITADEL_QDRANT_PREFIX=PREFIX,
        )
        assert exported.returncode == 0, exported.stderr
        moved = await citadel_here(tmp_path, "restore", str(jsonl), "--force", **env)
        assert moved.returncode == 0, moved.stderr
        assert fake.collections[f"{PREFIX}kb"] == {str(n): {"_owner": "k"} for n in range(300)}
        assert (f"{PREFIX}kb", "_owner") in fake.indexes  # the index the gateway makes on a server
        assert f"{PREFIX}docs" not in fake.collections
    unreachable = await citadel_here(tmp_path, "backup", "--only", "vectors", QDRANT_URL=url)
    one_line_failure(unreachable, "is unreachable")
