"""A file upload (POST /v1/files): the multipart body parsed as it streams in, bounded, then checked as JSONL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from ..errors import ClientClosedRequest, InvalidRequest, PayloadTooLarge

# A form field other than the file (`purpose`) is a word: more than this is not a purpose.
MAX_FIELD_BYTES = 1024
MAX_FILENAME_CHARS = 256
DEFAULT_FILENAME = "upload.jsonl"


@dataclass(slots=True)
class Upload:
    """The parts of the form that matter: the file's bytes and name, and the `purpose` field."""

    purpose: str | None
    filename: str
    data: bytearray  # as received: not copied into a bytes (a second file's worth of memory)


@dataclass(slots=True)
class _Part:
    name: str = ""
    filename: str | None = None


class _Form:
    """Collects the parts as the parser calls back: the `file` part up to `max_bytes`, fields up to MAX_FIELD_BYTES,
    anything else dropped (the body's own bound, BodyLimitMiddleware, caps what is read of those)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.part = _Part()
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.file: bytearray | None = None
        self.filename = DEFAULT_FILENAME
        self.purpose: bytearray | None = None
        self.sink: bytearray | None = None
        self.limit = 0
        self.ended = False  # the closing boundary arrived: a body cut short is not a file

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self.header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self.header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_end": self._end,
        }

    def _end(self) -> None:
        self.ended = True

    def _part_begin(self) -> None:
        self.part = _Part()
        self.sink = None

    def _header_end(self) -> None:
        if bytes(self.header_field).lower() == b"content-disposition":
            _, options = parse_options_header(bytes(self.header_value))
            self.part.name = options.get(b"name", b"").decode("utf-8", "replace")
            if b"filename" in options:
                self.part.filename = options[b"filename"].decode("utf-8", "replace")
        self.header_field.clear()
        self.header_value.clear()

    def _headers_finished(self) -> None:
        if self.part.name == "file":
            if self.file is not None:
                raise InvalidRequest("Send one file per request.", param="file")
            self.file = self.sink = bytearray()
            self.limit = self.max_bytes
            if self.part.filename:
                self.filename = self.part.filename[:MAX_FILENAME_CHARS]
        elif self.part.name == "purpose":
            self.purpose = self.sink = bytearray()
            self.limit = MAX_FIELD_BYTES

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.sink is None:
            return
        if len(self.sink) + (end - start) > self.limit:
            if self.sink is self.file:
                raise PayloadTooLarge(f"The file is larger than this server's limit of {self.max_bytes} bytes.")
            raise InvalidRequest("The purpose field is too long.", param="purpose")
        self.sink.extend(data[start:end])


async def read_upload(content_type: str | None, chunks: AsyncIterator[bytes], *, max_bytes: int) -> Upload:
    """Parse a multipart/form-data body as it arrives; 413 as soon as the file passes `max_bytes` (nothing past the
    limit is kept), 400 for a body that is not a well-formed form or lacks the file."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidRequest("Upload the file as multipart/form-data with the fields 'file' and 'purpose'.")
    form = _Form(max_bytes)
    parser = MultipartParser(boundary, form.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError:
        form.ended = False
    except ClientDisconnect:  # hung up mid-upload: nothing is stored, and nobody reads the answer
        raise ClientClosedRequest("The client closed the connection during the upload.") from None
    if not form.ended:
        raise InvalidRequest("The multipart/form-data body is malformed or cut short.")
    if form.file is None:
        raise InvalidRequest("The form has no 'file' part.", param="file")
    purpose = None if form.purpose is None else form.purpose.decode("utf-8", "replace").strip()
    return Upload(purpose=purpose, filename=form.filename, data=form.file)


def count_jsonl(data: bytes | bytearray, *, max_lines: int) -> int:
    """The number of non-empty lines of a batch input, each of which must be a JSON object in UTF-8; 400 naming
    the first bad line (by its number, never its content), or when there are none or more than `max_lines`."""
    view = memoryview(data)
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # a UTF-8 byte order mark is not part of line 1
    line_no = count = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            end = len(data)
        line_no += 1
        line = view[start:end]
        start = end + 1
        if not bytes(line).strip():
            continue
        count += 1
        if count > max_lines:
            raise InvalidRequest(f"The file has more than this server's limit of {max_lines} lines.", param="file")
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise InvalidRequest(f"Line {line_no} is not valid JSON in UTF-8.", param="file") from None
        if not isinstance(value, dict):
            raise InvalidRequest(f"Line {line_no} is not a JSON object.", param="file")
    if count == 0:
        raise InvalidRequest("The file has no lines: a batch input needs one request per line.", param="file")
    return count
