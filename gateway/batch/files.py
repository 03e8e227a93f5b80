"""Batch files in PostgreSQL: store (in 1 MiB chunks, within the key's quota), find (owner-scoped), list, read, delete.

Every function takes the process's sessionmaker (None without a database: 503) and turns a database failure into
the catalogue's error (gateway/errors_backends.py). A key sees only its own files; an admin sees all; anyone else
is told the file does not exist (404, never 403: an id's existence is not disclosed).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import delete, func, insert, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from ..auth import Principal
from ..errors import DatabaseUnavailable, InvalidRequest, NotFound, QuotaExceeded
from ..errors_backends import translate_postgres_error
from ..store.batch_models import CHUNK_BYTES, FileChunk, StoredFile
from ..store.db import unavailable

Sessions = async_sessionmaker[AsyncSession] | None
T = TypeVar("T")

# Chunks fetched per round trip when streaming a file out: about 2 MiB held at once.
STREAM_CHUNKS = 2


@dataclass(slots=True, frozen=True)
class FileRecord:
    """A stored file's description (not its bytes)."""

    id: str
    key_id: uuid.UUID
    purpose: str
    filename: str
    bytes: int
    lines: int
    created_at: datetime


@dataclass(slots=True, frozen=True)
class FileQuota:
    """How many batch input files, and bytes in all, one key may keep; None: no bound (admins)."""

    files: int | None
    bytes: int | None


@dataclass(slots=True, frozen=True)
class FilePage:
    data: list[FileRecord]
    has_more: bool


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


def _record(row: StoredFile) -> FileRecord:
    return FileRecord(
        id=row.id,
        key_id=row.key_id,
        purpose=row.purpose,
        filename=row.filename,
        bytes=row.bytes,
        lines=row.lines,
        created_at=row.created_at,
    )


def _not_found(file_id: str) -> NotFound:
    shown = file_id if len(file_id) <= 64 else file_id[:64] + "..."
    return NotFound(f"No file with id '{shown}'.", param="file_id")


def require_database(sessions: Sessions) -> async_sessionmaker[AsyncSession]:
    """The sessionmaker; 503 when this server runs without a database."""
    if sessions is None:
        raise DatabaseUnavailable("Files need the database, and this server runs without one (DATABASE_URL).")
    return sessions


async def _run(sessions: Sessions, work: Callable[[AsyncSession], Awaitable[T]], *, operation: str) -> T:
    """`work` in one session; no database, or one that fails, becomes the catalogue's 503 (or 400)."""
    maker = require_database(sessions)
    try:
        async with maker() as session:
            return await work(session)
    except Exception as exc:
        error = translate_postgres_error(exc)
        if error is None:
            raise
        raise (unavailable(exc, operation=operation) if isinstance(error, DatabaseUnavailable) else error) from exc


def _visible(principal: Principal) -> list[ColumnElement[bool]]:
    return [] if principal.is_admin else [StoredFile.key_id == principal.key_id]


async def store_file(
    sessions: Sessions,
    *,
    key_id: uuid.UUID,
    purpose: str,
    filename: str,
    data: bytes | bytearray,
    lines: int | None = None,
    quota: FileQuota | None = None,
) -> FileRecord:
    """Store `data` as a new file of `key_id` in one transaction; within `quota` (QuotaExceeded otherwise), which
    counts the key's purpose 'batch' files. `lines` defaults to the number of non-empty lines."""
    if lines is None:
        lines = sum(1 for line in data.split(b"\n") if line.strip())
    file_id = new_file_id()

    async def work(session: AsyncSession) -> FileRecord:
        async with session.begin():
            if quota is not None and (quota.files is not None or quota.bytes is not None):
                # One upload of a key at a time past this point: two at once cannot both fit the last room.
                await session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"files:{key_id}"})
                await _check_quota(session, key_id, quota, adding=len(data))
            row = StoredFile(
                id=file_id, key_id=key_id, purpose=purpose, filename=filename, bytes=len(data), lines=lines
            )
            session.add(row)
            await session.flush()
            # One statement a chunk, each sliced when sent: never a second copy of the whole file in memory.
            for seq, offset in enumerate(range(0, len(data), CHUNK_BYTES)):
                chunk = {"file_id": file_id, "seq": seq, "data": data[offset : offset + CHUNK_BYTES]}
                await session.execute(insert(FileChunk), chunk)
            await session.refresh(row, ["created_at"])
            return _record(row)

    return await _run(sessions, work, operation="files")


async def _check_quota(session: AsyncSession, key_id: uuid.UUID, quota: FileQuota, *, adding: int) -> None:
    held = (
        await session.execute(
            select(func.count(), func.coalesce(func.sum(StoredFile.bytes), 0)).where(
                StoredFile.key_id == key_id, StoredFile.purpose == "batch"
            )
        )
    ).one()
    count, size = int(held[0]), int(held[1])
    if quota.files is not None and count + 1 > quota.files:
        raise QuotaExceeded(
            f"This key keeps {count} batch files, its quota is {quota.files}: delete one first.", param="file"
        )
    if quota.bytes is not None and size + adding > quota.bytes:
        raise QuotaExceeded(
            f"This key keeps {size} bytes of batch files; {adding} more would pass its quota of {quota.bytes}. "
            "Delete files first.",
            param="file",
        )


async def get_file(sessions: Sessions, file_id: str, principal: Principal) -> FileRecord:
    """The file, if `principal` owns it or is an admin; 404 otherwise (whether or not it exists)."""

    async def work(session: AsyncSession) -> StoredFile | None:
        return await session.scalar(select(StoredFile).where(StoredFile.id == file_id, *_visible(principal)))

    row = await _run(sessions, work, operation="files")
    if row is None:
        raise _not_found(file_id)
    return _record(row)


async def list_files(
    sessions: Sessions, principal: Principal, *, purpose: str | None, limit: int, after: str | None, newest_first: bool
) -> FilePage:
    """One page of the files `principal` sees, by creation time (ties by id), after the file `after`."""
    created, ident = StoredFile.created_at, StoredFile.id
    order = (created.desc(), ident.desc()) if newest_first else (created.asc(), ident.asc())

    async def work(session: AsyncSession) -> FilePage:
        query = select(StoredFile).where(*_visible(principal))
        if purpose is not None:
            query = query.where(StoredFile.purpose == purpose)
        if after is not None:
            cursor = (
                await session.execute(select(created, ident).where(StoredFile.id == after, *_visible(principal)))
            ).one_or_none()
            if cursor is None:
                raise InvalidRequest("The cursor 'after' names no file of this key.", param="after")
            position = tuple_(created, ident)
            query = query.where(position < tuple_(*cursor) if newest_first else position > tuple_(*cursor))
        rows = list(await session.scalars(query.order_by(*order).limit(limit + 1)))
        return FilePage(data=[_record(row) for row in rows[:limit]], has_more=len(rows) > limit)

    return await _run(sessions, work, operation="files")


async def delete_file(sessions: Sessions, file_id: str, principal: Principal) -> None:
    """Delete the file and its chunks; 404 as get_file."""

    async def work(session: AsyncSession) -> int:
        async with session.begin():
            result = await session.execute(delete(StoredFile).where(StoredFile.id == file_id, *_visible(principal)))
            return int(result.rowcount)  # type: ignore[attr-defined]

    if await _run(sessions, work, operation="files") == 0:
        raise _not_found(file_id)


async def read_file_bytes(sessions: Sessions, file_id: str) -> bytes:
    """The whole file (for the batch runner, which has checked ownership itself); 404 for an unknown id."""

    async def work(session: AsyncSession) -> list[bytes] | None:
        async with session.begin():  # one snapshot: the file and its chunks as of one moment
            await session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            if await session.scalar(select(StoredFile.id).where(StoredFile.id == file_id)) is None:
                return None
            return list(
                await session.scalars(
                    select(FileChunk.data).where(FileChunk.file_id == file_id).order_by(FileChunk.seq)
                )
            )

    chunks = await _run(sessions, work, operation="files")
    if chunks is None:
        raise _not_found(file_id)
    return b"".join(chunks)


async def stream_file(sessions: Sessions, file_id: str) -> AsyncIterator[bytes]:
    """The file's chunks in order, STREAM_CHUNKS per query in one REPEATABLE READ transaction (one snapshot: a file
    deleted meanwhile still streams whole), so a download holds a few MiB, not the file (a server-side cursor would
    not do: SQLAlchemy's asyncpg cursor buffers 50 rows, 50 MiB here). Ownership is the caller's check (get_file)."""
    async with require_database(sessions)() as session, session.begin():
        await session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        seq = 0
        while True:
            query = select(FileChunk.data).where(
                FileChunk.file_id == file_id, FileChunk.seq >= seq, FileChunk.seq < seq + STREAM_CHUNKS
            )
            chunks = list(await session.scalars(query.order_by(FileChunk.seq)))
            for data in chunks:
                yield data
            if len(chunks) < STREAM_CHUNKS:
                return
            seq += STREAM_CHUNKS
