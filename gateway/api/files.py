"""Files under /v1/files for the Batch API: upload (multipart), list, describe, download, delete (gateway/batch)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import StreamingResponse

from ..auth import Permission, Principal, require
from ..batch import files as store
from ..batch.upload import count_jsonl, read_upload
from ..errors import InvalidRequest
from ..protocol.files import FileDeleted, FileList, FileOut
from ..services import services_of
from .openapi_schema import KEYED_ERRORS, errors

PATH = "/v1/files"
# A multipart body carries the file plus its boundaries, headers and the purpose field: this much more than the
# file's own limit may arrive before the upload parser (which bounds the file exactly) has its say.
MULTIPART_OVERHEAD_BYTES = 64 * 1024

router = APIRouter(prefix=PATH, tags=["files"], responses=errors(*KEYED_ERRORS, 403, 404))

Caller = Annotated[Principal, Depends(require(Permission.INFERENCE))]
FileId = Annotated[str, Path(max_length=64)]

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "JSONL: one request a line."},
                        "purpose": {"type": "string", "enum": ["batch"]},
                    },
                }
            }
        },
    }
}


def _out(record: store.FileRecord) -> FileOut:
    return FileOut(
        id=record.id,
        bytes=record.bytes,
        created_at=int(record.created_at.timestamp()),
        filename=record.filename,
        purpose=record.purpose,  # type: ignore[arg-type]  # the table's CHECK holds it to FilePurpose
    )


def _quota(principal: Principal, request: Request) -> store.FileQuota:
    if principal.is_admin:  # as for the vector quotas: admins are not bounded
        return store.FileQuota(files=None, bytes=None)
    batch = services_of(request.app).settings.batch
    return store.FileQuota(files=batch.key_max_files, bytes=batch.key_max_bytes)


@router.post("", response_model=FileOut, openapi_extra=_UPLOAD_BODY)
async def upload_file(request: Request, caller: Caller) -> FileOut:
    """Upload a batch input: `file` (JSONL, one request a line) and `purpose` "batch", as multipart/form-data.

    413 past CITADEL_BATCH_MAX_FILE_BYTES; 400 past CITADEL_BATCH_MAX_LINES, or for a line that is not a JSON
    object (its number is named); 403 insufficient_quota past the key's files or bytes quota.
    """
    services = services_of(request.app)
    limits = services.settings.batch
    store.require_database(services.db_sessions)  # 503 before reading a body that nothing could keep
    upload = await read_upload(request.headers.get("content-type"), request.stream(), max_bytes=limits.max_file_bytes)
    if upload.purpose != "batch":
        raise InvalidRequest("Only files of purpose 'batch' may be uploaded here.", param="purpose")
    lines = count_jsonl(upload.data, max_lines=limits.max_lines)
    record = await store.store_file(
        services.db_sessions,
        key_id=caller.key_id,
        purpose=upload.purpose,
        filename=upload.filename,
        data=upload.data,
        lines=lines,
        quota=_quota(caller, request),
    )
    return _out(record)


@router.get("", response_model=FileList)
async def list_files(
    request: Request,
    caller: Caller,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: Annotated[str | None, Query(max_length=64)] = None,
    order: Literal["asc", "desc"] = "desc",
) -> FileList:
    """The key's files (admins: everyone's), newest first unless `order=asc`; `after` a file id to page on."""
    page = await store.list_files(
        services_of(request.app).db_sessions,
        caller,
        purpose=purpose,
        limit=limit,
        after=after,
        newest_first=order == "desc",
    )
    data = [_out(record) for record in page.data]
    return FileList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=page.has_more,
    )


@router.get("/{file_id}", response_model=FileOut)
async def retrieve_file(request: Request, caller: Caller, file_id: FileId) -> FileOut:
    """One file's description; 404 unless it is the key's own (or the caller is an admin)."""
    return _out(await store.get_file(services_of(request.app).db_sessions, file_id, caller))


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The file's bytes."}},
)
async def file_content(request: Request, caller: Caller, file_id: FileId) -> StreamingResponse:
    """The file's bytes as stored (JSONL for batch files), streamed a few MiB at a time."""
    sessions = services_of(request.app).db_sessions
    record = await store.get_file(sessions, file_id, caller)
    chunks: AsyncIterator[bytes] = store.stream_file(sessions, record.id)
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(record.bytes),
            "Content-Disposition": f'attachment; filename="{record.id}.jsonl"',
        },
    )


@router.delete("/{file_id}", response_model=FileDeleted)
async def delete_file(request: Request, caller: Caller, file_id: FileId) -> FileDeleted:
    """Delete a file and its bytes; 404 unless it is the key's own (or the caller is an admin)."""
    await store.delete_file(services_of(request.app).db_sessions, file_id, caller)
    return FileDeleted(id=file_id)
