"""User feedback as a business metric: `POST /v1/feedback` rates one earlier request (the key's own, or
any for an admin). Stored in PostgreSQL against the request's audit row and counted in
citadel_llm_feedback_total."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.responses import Response

from ..auth import Permission, PrincipalDep, require
from ..errors import NotFound
from ..observability.metrics import count_feedback
from ..protocol.feedback import FeedbackCreate, FeedbackOut
from ..store import feedback as feedback_rows
from ..store.db import SessionDep, is_connection_error, unavailable
from .openapi_schema import KEYED_ERRORS, errors

router = APIRouter(prefix="/v1", tags=["feedback"])


@router.post(
    "/feedback",
    status_code=201,
    dependencies=[Depends(require(Permission.INFERENCE))],
    responses={
        200: {"model": FeedbackOut, "description": "The request was rated before: its rating is replaced."},
        **errors(*KEYED_ERRORS, 403, 404),
    },
)
async def rate_request(
    body: FeedbackCreate, session: SessionDep, principal: PrincipalDep, response: Response
) -> FeedbackOut:
    """Rate a request by the id the gateway echoed in X-Request-ID; rating it again replaces the rating (200).

    404 for an id this key did not make (whether or not another key did), or whose audit row is not
    stored yet (rows are written in batches, within about a second).
    """
    rating = str(body.rating)
    try:
        found = await feedback_rows.rated_request(
            session=session, request_id=body.request_id, key_id=None if principal.is_admin else principal.key_id
        )
        if found is None:
            raise NotFound("No request with this id was made with this key.", param="request_id")
        model, key_id = found
        row, created = await feedback_rows.save_rating(
            session=session,
            request_id=body.request_id,
            key_id=key_id,
            rated_by=principal.key_id,
            model=model,
            rating=rating,
            comment=body.comment,
        )
        await session.commit()
    except Exception as exc:
        if is_connection_error(exc):
            raise unavailable(exc, operation="feedback") from exc
        raise
    if created:  # a changed rating is not a second vote
        count_feedback(model or "none", rating)
    else:
        response.status_code = 200
    return FeedbackOut(
        request_id=row.request_id, model=row.model, rating=row.rating, comment=row.comment, rated_at=row.rated_at
    )
