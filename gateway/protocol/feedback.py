"""Feedback API wire models: a rating of one earlier request (POST /v1/feedback)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# The X-Request-ID alphabet (gateway/middleware.py): what the gateway echoed on the rated request.
RequestId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")]
# Thumbs or stars: a bounded set, so the metric's `rating` label stays bounded too.
Rating = Literal["up", "down"] | Annotated[int, Field(ge=1, le=5, strict=True)]


class FeedbackCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: RequestId
    rating: Rating
    comment: Annotated[str, Field(max_length=2000)] | None = None


class FeedbackOut(BaseModel):
    object: Literal["feedback"] = "feedback"
    request_id: str
    model: str | None
    rating: str
    comment: str | None
    rated_at: datetime
