"""The Batch API's batches under /v1/batches (OpenAI's shapes): create, retrieve, list (cursor pages), cancel. A key
sees only its own batches (an admin all); another key's batch is a 404, never a 403. The runner does the work
(gateway/batch/runner.py)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from ..auth import Permission, Principal, PrincipalDep, require
from ..batch import batches as rows
from ..batch.files import get_file
from ..errors import NotFound
from ..protocol.batches import BatchCreate, BatchErrors, BatchList, BatchOut, BatchRequestCounts
from ..store.batch_models import BatchRecord
from ..store.db import SessionDep, is_connection_error, unavailable
from .deps import ServicesDep
from .openapi_schema import KEYED_ERRORS, errors

router = APIRouter(
    prefix="/v1/batches",
    tags=["batches"],
    dependencies=[Depends(require(Permission.INFERENCE))],
    responses=errors(*KEYED_ERRORS, 403, 404, 503),
)


def _owner(principal: Principal) -> uuid.UUID | None:
    """Whose batches the caller sees: its own; an admin's None (all)."""
    return None if principal.is_admin else principal.key_id


def _unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def batch_out(record: BatchRecord) -> BatchOut:
    """A stored batch in OpenAI's Batch shape."""
    return BatchOut(
        id=record.id,
        endpoint=record.endpoint,  # type: ignore[arg-type]  # the table's CHECK keeps it to the three paths
        errors=BatchErrors.model_validate(record.errors) if record.errors else None,
        input_file_id=record.input_file_id,
        completion_window=record.completion_window,
        status=record.status,  # type: ignore[arg-type]  # the table's CHECK keeps it to the known states
        output_file_id=record.output_file_id,
        error_file_id=record.error_file_id,
        created_at=int(record.created_at.timestamp()),
        in_progress_at=_unix(record.in_progress_at),
        expires_at=_unix(record.expires_at),
        finalizing_at=_unix(record.finalizing_at),
        completed_at=_unix(record.completed_at),
        failed_at=_unix(record.failed_at),
        expired_at=_unix(record.expired_at),
        cancelling_at=_unix(record.cancelling_at),
        cancelled_at=_unix(record.cancelled_at),
        request_counts=BatchRequestCounts(total=record.total, completed=record.completed, failed=record.failed),
        metadata=record.metadata_,
    )


def _not_found() -> NotFound:
    return NotFound("No batch with this id.", param="batch_id")


@router.post("", response_model=BatchOut)
async def create_batch(
    body: BatchCreate, session: SessionDep, services: ServicesDep, principal: PrincipalDep
) -> BatchOut:
    """A batch over an uploaded file (purpose `batch`) of this key's; it starts in `validating`."""
    try:
        try:
            found = await get_file(services.db_sessions, body.input_file_id, principal)
        except NotFound:
            found = None
        if found is None or found.purpose != "batch":
            raise NotFound("No file with this id and purpose 'batch' for this key.", param="input_file_id")
        record = await rows.create(
            session,
            key_id=principal.key_id,
            input_file_id=body.input_file_id,
            endpoint=body.endpoint,
            completion_window=body.completion_window,
            metadata=body.metadata,
        )
        await session.commit()
    except Exception as exc:
        if is_connection_error(exc):
            raise unavailable(exc, operation="batches") from exc
        raise
    return batch_out(record)


@router.get("/{batch_id}", response_model=BatchOut)
async def retrieve_batch(batch_id: str, session: SessionDep, principal: PrincipalDep) -> BatchOut:
    """One batch, with its status, counts and output and error file ids."""
    record = await rows.get(session, batch_id, key_id=_owner(principal))
    if record is None:
        raise _not_found()
    return batch_out(record)


@router.get("", response_model=BatchList)
async def list_batches(
    session: SessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> BatchList:
    """This key's batches, newest first, `limit` a page; `after` is the last id of the page before."""
    records, has_more = await rows.page(session, key_id=_owner(principal), limit=limit, after=after)
    data = [batch_out(record) for record in records]
    return BatchList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )


@router.post("/{batch_id}/cancel", response_model=BatchOut)
async def cancel_batch(batch_id: str, session: SessionDep, principal: PrincipalDep) -> BatchOut:
    """Stop a batch: `cancelling` now, `cancelled` once the runner has written what is done (the output file)."""
    try:
        record = await rows.cancel(session, batch_id, key_id=_owner(principal))
        await session.commit()
    except Exception as exc:
        if is_connection_error(exc):
            raise unavailable(exc, operation="batches") from exc
        raise
    if record is None:
        raise _not_found()
    return batch_out(record)
