"""Qdrant's part of a backup: every collection of this gateway (the CITADEL_QDRANT_PREFIX ones, registry included).

A Qdrant server (QDRANT_URL): its snapshot API, per collection. Each snapshot is made on the server,
downloaded into the backup (its SHA-256 checked against the server's), then deleted from the server.
Restore uploads each one (`POST /collections/<name>/snapshots/upload?priority=snapshot`, the checksum from
the manifest), which creates or replaces the collection. The registry is snapshotted first and entries whose
collection is gone by the time of restore are dropped, so a collection deleted while the backup ran is not
left registered; a collection created meanwhile comes back as an unregistered leftover, which the gateway
clears when the name is used again. Each snapshot is consistent; across collections, stop writes for a
backup that is consistent as a whole.

The embedded local mode (no QDRANT_URL) has no snapshot API. Its backup scrolls every point, with payload
and vector, into one JSONL file per collection (a header line with the collection's vector configuration
and point count, then one point a line); restore re-creates each collection and upserts the points. Chosen
over copying the store's folder because:
  - the folder's format is qdrant-client's private one (pickled points in SQLite), tied to its version and
    unsafe to load from a file that was changed; JSONL is plain data, checked against the manifest's checksums;
  - JSONL holds only this gateway's collections, while the folder holds anything else put there;
  - a JSONL backup restores into a Qdrant server too: the way from `make run`'s embedded store to compose's
    Qdrant (payload indexes that the gateway makes on a server, `_owner`, are created then).
Either way the store must not change meanwhile, and the local mode allows one process at a time: backup and
restore hold the store's lock while they run, and refuse with a clear message when a gateway holds it.
The local mode is meant for small collections (qdrant-client warns past 20,000 points), so a scroll is quick.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from ..settings import Settings
from . import BackupError, Echo
from .archive import human_size

FOLDER = "qdrant"
BATCH = 256
# Backups and restores of large collections take long: one call may take this long (reachability is
# checked first, within the gateway's own CITADEL_QDRANT_TIMEOUT_S).
LONG_TIMEOUT_S = 600
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_PROGRESS_BYTES = 64 << 20
_PROGRESS_POINTS = 10_000


@dataclass(frozen=True, slots=True)
class QdrantTarget:
    """Where this gateway keeps its collections: the settings' QDRANT_URL, or the embedded store's folder."""

    url: str | None
    api_key: str | None
    path: Path
    prefix: str
    timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> QdrantTarget:
        return cls(
            url=settings.qdrant_url.rstrip("/") if settings.qdrant_url else None,
            api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
            path=settings.qdrant.path,
            prefix=settings.qdrant.prefix,
            timeout_s=settings.qdrant.timeout_s,
        )

    @property
    def where(self) -> str:
        return f"Qdrant at {self.url}" if self.url else f"the embedded Qdrant store at {self.path}"

    @property
    def registry(self) -> str:
        return self.prefix + "_registry"

    def headers(self) -> dict[str, str]:
        return {"api-key": self.api_key} if self.api_key else {}


@contextmanager
def _errors(target: QdrantTarget) -> Iterator[None]:
    """Qdrant's failures as one line each."""
    try:
        yield
    except BackupError:
        raise
    except UnexpectedResponse as exc:
        hint = " (check QDRANT_API_KEY)" if exc.status_code in (401, 403) else ""
        raise BackupError(f"{target.where} answered {exc.status_code}: {_reason(exc.content)}{hint}") from None
    except (ResponseHandlingException, httpx.HTTPError, OSError) as exc:
        raise BackupError(f"{target.where} is unreachable ({type(exc).__name__}: {exc})") from None


def _reason(content: bytes) -> str:
    """Qdrant's own error text from an answer body ({"status": {"error": "..."}}), else the body's start."""
    try:
        return str(json.loads(content)["status"]["error"])
    except (ValueError, KeyError, TypeError):
        return content[:200].decode(errors="replace") or "no details"


@contextmanager
def _client(target: QdrantTarget, *, create: bool) -> Iterator[QdrantClient | None]:
    """A client of the server (checked reachable), or of the embedded store holding its lock; None when the
    embedded store does not exist and `create` is false (nothing to back up)."""
    if target.url:
        with _errors(target):
            QdrantClient(
                url=target.url, api_key=target.api_key, timeout=max(1, int(target.timeout_s)), check_compatibility=False
            ).get_collections()
        client = QdrantClient(url=target.url, api_key=target.api_key, timeout=LONG_TIMEOUT_S, check_compatibility=False)
    else:
        if not create and not (target.path / "meta.json").exists():
            yield None
            return
        try:
            target.path.mkdir(parents=True, exist_ok=True)
            client = QdrantClient(path=str(target.path))
        except RuntimeError:  # the local mode's lock: another process has the folder open
            raise BackupError(
                f"{target.where} is in use by another process (a running gateway?): stop it first, "
                f"or leave the vectors out with --only database"
            ) from None
        except OSError as exc:
            raise BackupError(f"cannot open {target.where}: {exc.strerror or exc}") from None
    try:
        yield client
    finally:
        client.close()


def _ours(client: QdrantClient, target: QdrantTarget) -> list[str]:
    """This gateway's collections (named with its prefix), the registry first."""
    names = sorted(c.name for c in client.get_collections().collections if c.name.startswith(target.prefix))
    return sorted(names, key=lambda name: name != target.registry)


# ---- backup -----------------------------------------------------------------------------------------------


def backup_vectors(target: QdrantTarget, root: Path, *, echo: Echo) -> dict[str, Any]:
    """Write this gateway's collections under root/qdrant; returns the manifest's `qdrant` section."""
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    section: dict[str, Any] = {
        "mode": "snapshot" if target.url else "jsonl",
        "source": "server" if target.url else "embedded",
        "prefix": target.prefix,
        "collections": [],
    }
    with _client(target, create=False) as client, _errors(target):
        if client is None:
            echo(f"qdrant: {target.where} does not exist: no collections to back up")
            return section
        names = _ours(client, target)
        echo(f"qdrant: {target.where}, {len(names)} collection(s) with prefix {target.prefix!r}")
        for physical in names:
            name = physical[len(target.prefix) :]
            if not _SAFE_NAME.match(name):
                echo(f"qdrant:   skipped {physical!r}: not a name this gateway makes")
                continue
            if target.url:
                entry = _snapshot(client, target, physical, name, folder, echo=echo)
            else:
                entry = _export(client, physical, name, folder, echo=echo)
            if entry is not None:
                section["collections"].append(entry)
    return section


def _snapshot(
    client: QdrantClient, target: QdrantTarget, physical: str, name: str, folder: Path, *, echo: Echo
) -> dict[str, Any] | None:
    try:
        points = client.count(physical, exact=True).count
        snapshot = client.create_snapshot(physical, wait=True)
    except UnexpectedResponse as exc:
        if exc.status_code == 404:
            echo(f"qdrant:   {physical}: deleted meanwhile, skipped")
            return None
        raise
    if snapshot is None:  # pragma: no cover - only with wait=False
        raise BackupError(f"{target.where} made no snapshot of {physical}")
    file = folder / f"{name}.snapshot"
    echo(f"qdrant:   {physical}: snapshot {snapshot.name} ({human_size(snapshot.size)}, {points} points)")
    try:
        digest = _download(target, f"/collections/{physical}/snapshots/{snapshot.name}", file, echo=echo)
    finally:
        try:
            client.delete_snapshot(physical, snapshot.name, wait=True)
        except (UnexpectedResponse, ResponseHandlingException):  # a leftover snapshot on the server, no more
            echo(f"qdrant:   could not delete snapshot {snapshot.name} from the server (remove it by hand)")
    if snapshot.checksum and snapshot.checksum != digest:
        raise BackupError(f"the snapshot of {physical} changed on its way from {target.where} (checksum differs)")
    return {"name": name, "physical": physical, "file": f"{FOLDER}/{file.name}", "points": points}


def _download(target: QdrantTarget, path: str, file: Path, *, echo: Echo) -> str:
    digest = hashlib.sha256()
    done = shown = 0
    timeout = httpx.Timeout(LONG_TIMEOUT_S, connect=target.timeout_s)
    with (
        httpx.stream("GET", f"{target.url}{path}", headers=target.headers(), timeout=timeout) as answer,
        file.open("wb") as out,
    ):
        if answer.status_code != 200:
            raise BackupError(f"{target.where} answered {answer.status_code} to the snapshot download")
        for chunk in answer.iter_bytes(1 << 20):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if done - shown >= _PROGRESS_BYTES:
                echo(f"qdrant:     {human_size(done)} downloaded")
                shown = done
    return digest.hexdigest()


def _export(client: QdrantClient, physical: str, name: str, folder: Path, *, echo: Echo) -> dict[str, Any]:
    info = client.get_collection(physical)
    params = info.config.params
    if params.sparse_vectors:
        raise BackupError(f"{physical} has sparse vectors, which this backup does not handle")
    vectors = params.vectors
    if isinstance(vectors, dict):
        config: Any = {key: value.model_dump(mode="json", exclude_none=True) for key, value in vectors.items()}
    elif vectors is not None:
        config = vectors.model_dump(mode="json", exclude_none=True)
    else:  # pragma: no cover - every collection the gateway makes has a vector
        config = {}
    total = info.points_count or 0
    header = {
        "collection": name,
        "vectors": config,
        "payload_schema": {field: schema.data_type for field, schema in (info.payload_schema or {}).items()},
        "points": total,
    }
    file = folder / f"{name}.jsonl"
    written = 0
    offset: Any = None
    with file.open("w", encoding="utf-8") as out:
        out.write(json.dumps(header) + "\n")
        while True:
            records, offset = client.scroll(physical, limit=BATCH, offset=offset, with_payload=True, with_vectors=True)
            for record in records:
                line = {"id": record.id, "vector": record.vector, "payload": record.payload}
                out.write(json.dumps(line, separators=(",", ":")) + "\n")
            written += len(records)
            if written and written % _PROGRESS_POINTS < BATCH and offset is not None:
                echo(f"qdrant:     {physical}: {written}/{total} points")
            if offset is None:
                break
    echo(f"qdrant:   {physical}: {written} points")
    return {"name": name, "physical": physical, "file": f"{FOLDER}/{file.name}", "points": written}


# ---- restore ----------------------------------------------------------------------------------------------


def check_restore(target: QdrantTarget, section: dict[str, Any], *, force: bool) -> None:
    """Everything restore_vectors would refuse, checked before anything (the database, too) is changed."""
    _check_mode(target, section)
    with _client(target, create=True) as client, _errors(target):
        assert client is not None
        _check(client, target, force=force)


def _check_mode(target: QdrantTarget, section: dict[str, Any]) -> None:
    mode = section.get("mode")
    if mode not in ("snapshot", "jsonl"):
        raise BackupError(f"the backup's Qdrant part has an unknown mode {mode!r}")
    if mode == "snapshot" and not target.url:
        raise BackupError(
            "this backup holds Qdrant server snapshots, which only a Qdrant server can restore: set QDRANT_URL"
        )


def _check(client: QdrantClient, target: QdrantTarget, *, force: bool) -> list[str]:
    """This gateway's collections there now; refused when any holds documents, unless `force`."""
    present = _ours(client, target)
    busy = [name for name in present if name != target.registry and client.count(name, exact=True).count]
    if busy and not force:
        shown = ", ".join(busy[:5]) + (", ..." if len(busy) > 5 else "")
        raise BackupError(
            f"{target.where} already holds documents ({shown}); a restore replaces every collection with "
            f"prefix {target.prefix!r}: stop the gateways and add --force"
        )
    return present


def restore_vectors(
    target: QdrantTarget, root: Path, section: dict[str, Any], *, checksums: dict[str, str], force: bool, echo: Echo
) -> None:
    """Make this gateway's collections those of the backup (renamed to this gateway's prefix if it differs).

    `checksums`: each file's SHA-256 from the (verified) manifest; Qdrant checks an uploaded snapshot against it.
    """
    _check_mode(target, section)
    mode = section["mode"]
    entries: list[dict[str, Any]] = list(section.get("collections") or [])
    with _client(target, create=True) as client, _errors(target):
        assert client is not None
        present = _check(client, target, force=force)
        echo(f"qdrant: restoring {len(entries)} collection(s) into {target.where}")
        for entry in entries:
            name = str(entry["name"])
            if not _SAFE_NAME.match(name):
                raise BackupError(f"the backup names a collection {name!r}, which no gateway makes")
            physical = target.prefix + name
            file = root / str(entry["file"])
            if mode == "snapshot":
                _upload(target, physical, file, checksum=checksums[str(entry["file"])], echo=echo)
            else:
                _import(client, target, physical, name, file, echo=echo)
        restored = {target.prefix + str(entry["name"]) for entry in entries}
        for extra in sorted(set(present) - restored):
            client.delete_collection(extra)
            echo(f"qdrant:   removed {extra} (not in the backup)")
        _prune_registry(client, target, echo=echo)


def _upload(target: QdrantTarget, physical: str, file: Path, *, checksum: str, echo: Echo) -> None:
    echo(f"qdrant:   {physical}: uploading its snapshot ({human_size(file.stat().st_size)})")
    timeout = httpx.Timeout(LONG_TIMEOUT_S, connect=target.timeout_s)
    params = {"wait": "true", "priority": "snapshot", "checksum": checksum}
    with file.open("rb") as handle:
        answer = httpx.post(
            f"{target.url}/collections/{physical}/snapshots/upload",
            params=params,
            headers=target.headers(),
            files={"snapshot": (file.name, handle, "application/octet-stream")},
            timeout=timeout,
        )
    if answer.status_code != 200:
        raise BackupError(f"{target.where} refused the snapshot of {physical}: {_reason(answer.content)}")


def _import(client: QdrantClient, target: QdrantTarget, physical: str, name: str, file: Path, *, echo: Echo) -> None:
    with file.open(encoding="utf-8") as lines:
        try:
            header = json.loads(lines.readline())
            config = header["vectors"]
            vectors: Any = (
                models.VectorParams.model_validate(config)
                if "size" in config
                else {key: models.VectorParams.model_validate(value) for key, value in config.items()}
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise BackupError(f"{file.name}: not a collection export ({exc})") from None
        if client.collection_exists(physical):
            client.delete_collection(physical)
        client.create_collection(physical, vectors_config=vectors)
        if target.url:  # a server indexes payload fields; the local mode has no indexes
            schema = dict(header.get("payload_schema") or {})
            if not schema and physical != target.registry:
                schema = {"_owner": "keyword"}  # from the embedded store: the index the gateway makes on a server
            for field, kind in schema.items():
                client.create_payload_index(physical, field_name=field, field_schema=models.PayloadSchemaType(kind))
        total, done = int(header.get("points", 0)), 0
        batch: list[models.PointStruct] = []
        for number, line in enumerate(lines, start=2):
            try:
                point = json.loads(line)
                batch.append(models.PointStruct(id=point["id"], vector=point["vector"], payload=point["payload"]))
            except (ValueError, KeyError, TypeError):
                raise BackupError(f"{file.name}, line {number}: not a point") from None
            if len(batch) == BATCH:
                client.upsert(physical, points=batch, wait=True)
                done += len(batch)
                batch = []
                if done % _PROGRESS_POINTS < BATCH:
                    echo(f"qdrant:     {physical}: {done}/{total} points")
        if batch:
            client.upsert(physical, points=batch, wait=True)
            done += len(batch)
    count = client.count(physical, exact=True).count
    if count != total:
        raise BackupError(f"restored {physical}, but it holds {count} points where the backup had {total}")
    echo(f"qdrant:   {physical}: {count} points")


def _prune_registry(client: QdrantClient, target: QdrantTarget, *, echo: Echo) -> None:
    """Drop registry entries whose collection is not there (deleted while a server backup ran)."""
    if not client.collection_exists(target.registry):
        return
    records, _ = client.scroll(target.registry, limit=100_000, with_payload=True)
    stale = [
        record.id
        for record in records
        if record.payload and not client.collection_exists(target.prefix + str(record.payload.get("name")))
    ]
    if stale:
        client.delete(target.registry, points_selector=models.PointIdsList(points=stale), wait=True)
        echo(f"qdrant:   {len(stale)} registry entr{'y' if len(stale) == 1 else 'ies'} without a collection removed")
