"""Conversation sessions for chat completions: `X-Session-ID` prepends stored history and, after the
answer has gone out, appends the new turn and the assistant's reply."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .auth import Principal
from .context import Answer
from .errors import DatabaseUnavailable, InvalidRequest, NotFound
from .store import conversations as rows

log = logging.getLogger(__name__)

SESSION_HEADER = "x-session-id"
# A rough, tokenizer-free estimate (about 4 characters a token for English, plus per-message overhead),
# used only to decide how much stored history fits the model's context.
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4
DEFAULT_ANSWER_TOKENS = 256


def estimate_tokens(message: dict[str, Any]) -> int:
    content = message.get("content")
    text = content if isinstance(content, str) else str(content or "")
    return len(text) // CHARS_PER_TOKEN + MESSAGE_OVERHEAD_TOKENS


def trim_history(history: list[dict[str, Any]], *, new: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """The newest stored messages that fit in `budget` tokens together with the new ones."""
    remaining = budget - sum(estimate_tokens(m) for m in new)
    kept: list[dict[str, Any]] = []
    for message in reversed(history):
        remaining -= estimate_tokens(message)
        if remaining < 0:
            break
        kept.append(message)
    return kept[::-1]


def parse_session_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidRequest("X-Session-ID must be a UUID.", param="X-Session-ID") from None


class Conversations:
    """Loads and stores session history; every database failure is a 503, never a lost answer."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession] | None) -> None:
        self._sessions = sessions

    async def history(self, *, session_id: uuid.UUID, principal: Principal, model: str | None) -> list[dict[str, Any]]:
        if self._sessions is None:
            raise DatabaseUnavailable("Sessions need the database, and none is configured.")
        try:
            async with self._sessions() as db:
                found = await rows.load_or_create(
                    session=db, session_id=session_id, key_id=principal.key_id, is_admin=principal.is_admin, model=model
                )
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise DatabaseUnavailable("The session store is unreachable; try again shortly.") from exc
        if found is None:
            raise NotFound(f"No session with id {session_id}.", param="X-Session-ID")
        return found

    def remember(
        self, *, session_id: uuid.UUID, new: list[dict[str, Any]], answer: Answer
    ) -> Callable[[], Awaitable[None]]:
        """The job that appends this turn; run it once the response (or the whole stream) has been sent."""
        return functools.partial(self._append, session_id=session_id, new=new, answer=answer)

    async def _append(self, *, session_id: uuid.UUID, new: list[dict[str, Any]], answer: Answer) -> None:
        reply = answer.reply()
        if reply is None or self._sessions is None:
            return  # the request failed: nothing to remember
        try:
            async with self._sessions() as db:
                await rows.append(session=db, session_id=session_id, messages=[*new, reply])
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            # The client has its answer; only this turn's history is missing. Logged without content.
            log.warning("could not store a turn of session %s: %s", session_id, type(exc).__name__)
