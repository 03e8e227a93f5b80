"""The backup's container: one directory, or one tar archive of it, with manifest.json at its top.

manifest.json says what the backup holds and lists every other file with its size and SHA-256:

    {"format": "citadel-backup", "format_version": 1, "created_at": "2025-06-01T02:00:00Z",
     "gateway_version": "0.1.0", "postgres": {...}, "qdrant": {...},
     "files": {"postgres/llm.dump": {"size": 48213, "sha256": "9f86..."}, ...}, "total_bytes": 48213}

A backup is written into a hidden folder beside its destination and appears under its name only when it
is complete (a folder renamed, or a `.partial` archive renamed), so a failed or interrupted backup never
leaves something that looks like a backup. Backups hold key digests, prompts and audit rows: the folder
is mode 0700 and an archive 0600. Reading one checks the manifest, that exactly the listed files are
there, and every size and checksum, before anything is restored.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import BackupError, Echo

FORMAT = "citadel-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_CHUNK = 1 << 20


def is_tar(path: Path) -> bool:
    """True when `path` names an archive (.tar, .tar.gz, .tgz) rather than a folder."""
    return path.name.endswith(TAR_SUFFIXES)


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def file_digest(path: Path) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex) of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _files(root: Path) -> list[str]:
    """Every file under root but the manifest, as sorted POSIX paths relative to root."""
    found = (path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())
    return sorted(name for name in found if name != MANIFEST)


def write_manifest(root: Path, content: dict[str, Any]) -> dict[str, Any]:
    """Write root/manifest.json: `content` plus the size and checksum of every file under root."""
    files: dict[str, dict[str, Any]] = {}
    for name in _files(root):
        size, digest = file_digest(root / name)
        files[name] = {"size": size, "sha256": digest}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **content,
        "files": files,
        "total_bytes": sum(entry["size"] for entry in files.values()),
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


@contextmanager
def staged(destination: Path, *, echo: Echo) -> Iterator[Path]:
    """A private folder to write the backup into; on success it becomes `destination` (a folder or archive)."""
    destination = destination.absolute()
    if destination.exists():
        raise BackupError(f"{destination} already exists: a backup never overwrites, choose a new name")
    if not destination.parent.is_dir():
        raise BackupError(f"cannot write {destination}: the folder {destination.parent} does not exist")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    except OSError as exc:
        raise BackupError(f"cannot write in {destination.parent}: {exc.strerror}") from None
    try:
        yield staging
        _seal(staging, destination, echo=echo)
    except OSError as exc:
        raise BackupError(f"cannot write the backup {destination}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _seal(staging: Path, destination: Path, *, echo: Echo) -> None:
    if not is_tar(destination):
        staging.rename(destination)
        return
    partial = destination.with_name(destination.name + ".partial")
    echo(f"writing {destination.name}")
    try:
        partial.touch(mode=0o600)
        with tarfile.open(partial, "w" if destination.name.endswith(".tar") else "w:gz") as tar:
            for name in [MANIFEST, *_files(staging)]:  # the manifest first: `tar -xOf x.tar manifest.json` is quick
                tar.add(staging / name, arcname=name, recursive=False)
        partial.rename(destination)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def opened(source: Path, *, echo: Echo) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(folder, manifest) of a verified backup; an archive is unpacked into a temporary folder first ($TMPDIR)."""
    if source.is_dir():
        yield source, verify(source, echo=echo)
        return
    if not source.is_file():
        raise BackupError(f"{source}: no such backup (a folder or a .tar archive)")
    unpacked = Path(tempfile.mkdtemp(prefix="citadel-restore-"))
    try:
        echo(f"unpacking {source.name} ({human_size(source.stat().st_size)})")
        try:
            with tarfile.open(source, "r:*") as tar:
                tar.extractall(unpacked, filter="data")  # no absolute paths, links out or devices
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise BackupError(f"{source} is not a readable backup archive ({exc or type(exc).__name__})") from None
        except OSError as exc:
            raise BackupError(f"cannot unpack {source}: {exc.strerror or exc}") from None
        yield unpacked, verify(unpacked, echo=echo)
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)


def verify(root: Path, *, echo: Echo) -> dict[str, Any]:
    """The manifest of the backup in `root`, once every listed file is there, unchanged, and no other is."""
    path = root / MANIFEST
    if not path.is_file():
        raise BackupError("not a Citadel backup: it has no manifest.json")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise BackupError("the backup is damaged: manifest.json is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError("not a Citadel backup: manifest.json is not a Citadel backup manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(
            f"this backup has format version {manifest.get('format_version')!r}; this Citadel reads "
            f"version {FORMAT_VERSION} (restore it with the Citadel version that made it, or a newer one)"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)
        for entry in files.values()
    ):
        raise BackupError("the backup is damaged: manifest.json has no valid file list")
    _check_parts(manifest)
    present = set(_files(root))
    if missing := sorted(set(files) - present):
        raise BackupError(f"the backup is incomplete: {missing[0]} is missing ({len(missing)} file(s) in all)")
    if extra := sorted(present - set(files)):
        raise BackupError(f"the backup holds a file its manifest does not list: {extra[0]}")
    total = sum(entry["size"] for entry in files.values())
    echo(f"verifying {len(files)} file(s), {human_size(total)}, against manifest.json")
    for name in sorted(files):
        size, digest = file_digest(root / name)
        if size != files[name]["size"] or digest != files[name]["sha256"]:
            raise BackupError(f"the backup is corrupt: {name} does not match its checksum in manifest.json")
    return manifest


def _check_parts(manifest: dict[str, Any]) -> None:
    """The `postgres` and `qdrant` sections name files of the backup (restore relies on their shape)."""
    files = manifest["files"]
    postgres, qdrant = manifest.get("postgres"), manifest.get("qdrant")
    valid = postgres is None or (isinstance(postgres, dict) and postgres.get("file") in files)
    if qdrant is not None:
        collections = qdrant.get("collections") if isinstance(qdrant, dict) else None
        valid = valid and isinstance(collections, list)
        valid = valid and all(
            isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry.get("file") in files
            for entry in collections or []
        )
    if not valid:
        raise BackupError("the backup is damaged: manifest.json does not describe its parts")
