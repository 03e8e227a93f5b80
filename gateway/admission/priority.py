"""Priority classes: which waiting work the gateway's admission queue serves first, and vLLM's `priority` for each."""

from __future__ import annotations

from enum import StrEnum


class Priority(StrEnum):
    """A request's class. Interactive work is served before any batch work waiting for the same model."""

    INTERACTIVE = "interactive"
    BATCH = "batch"

    @property
    def rank(self) -> int:
        """Lower goes first: the order of the admission queue's classes, and the value sent as vLLM's `priority`
        (its priority scheduler also runs lower values first)."""
        return _RANK[self]


_RANK = {Priority.INTERACTIVE: 0, Priority.BATCH: 1}

# The header a request names its class in (at most its key's class: a batch key cannot ask for interactive).
PRIORITY_HEADER = "X-Citadel-Priority"


def effective_priority(asked: str | None, key_class: Priority) -> Priority:
    """The class a request runs in: the one it asks for, never above its key's; raises ValueError for an unknown
    name (the caller turns it into a 400)."""
    if asked is None or asked == "":
        return key_class
    wanted = Priority(asked.strip().lower())
    return wanted if wanted.rank >= key_class.rank else key_class
