"""Files API wire models in OpenAI's shapes (openai.types.FileObject, FileDeleted, a cursor page of files)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

FilePurpose = Literal["batch", "batch_output"]


class FileOut(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int  # Unix seconds
    filename: str
    purpose: FilePurpose
    status: Literal["processed"] = "processed"  # stored whole and checked before the answer: never "uploaded"


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileOut]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: Literal[True] = True
