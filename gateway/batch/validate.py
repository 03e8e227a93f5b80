"""A batch's input file checked before any line runs: each line's JSON, custom_id, method, url and body (the
endpoint's request, a model the key may use, no streaming). Pure: the caller reads the file and stores the result.

Like OpenAI, one bad line fails the whole batch and no line runs; the errors name the 1-based line numbers (and
never quote the line: a file's content stays out of errors and logs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..aliases import alias_allowed
from ..auth import Principal
from ..catalog import Catalog
from ..errors import InvalidRequest
from ..inference import INFERENCE_PATHS, Endpoint

# An error list past this length is cut (a wholly wrong 50,000-line file needs no 50,000 errors to be fixed).
MAX_ERRORS = 100
# A custom_id is the caller's own key back into its data; bounded so one line cannot bloat the output file.
MAX_CUSTOM_ID_CHARS = 512
ENDPOINT_OF_PATH: dict[str, Endpoint] = {path: endpoint for endpoint, path in INFERENCE_PATHS.items()}
_KIND_FOR: dict[Endpoint, str] = {"chat": "chat", "completions": "chat", "embeddings": "embedding"}

# parse(endpoint, body bytes): raises InvalidRequest when the body is not the endpoint's request.
Parse = Callable[[Endpoint, bytes], object]


@dataclass(frozen=True, slots=True)
class LineError:
    """One refused line, in OpenAI's batch error shape (`line` is 1-based)."""

    code: str
    message: str
    line: int
    param: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "line": self.line, "param": self.param}


@dataclass(frozen=True, slots=True)
class InputLine:
    """One request of the batch, checked: its line number, the caller's custom_id and the request body."""

    line_no: int
    custom_id: str
    body: dict[str, Any]


@dataclass(slots=True)
class Validated:
    """The lines when every one is good; else the errors (then `lines` is empty: nothing runs)."""

    lines: list[InputLine] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    truncated: bool = False  # more errors than MAX_ERRORS were found

    @property
    def ok(self) -> bool:
        return not self.errors

    def errors_json(self) -> dict[str, Any]:
        """The batch's `errors` object ({object: "list", data: [...]})."""
        return {"object": "list", "data": [error.as_json() for error in self.errors]}


class _Refused(Exception):
    """A line's first problem (only the first is reported per line, as OpenAI does)."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def validate_input(
    data: bytes,
    *,
    endpoint_path: str,
    principal: Principal,
    catalog: Catalog,
    parse: Parse,
    max_line_bytes: int,
) -> Validated:
    """Check every non-blank line of a JSONL input file against the batch's endpoint (`/v1/...`)."""
    endpoint = ENDPOINT_OF_PATH[endpoint_path]
    result = Validated()
    seen: set[str] = set()
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue  # blank lines (a trailing newline, a CRLF file's last line) are no requests
        try:
            line = _check_line(
                raw,
                line_no=line_no,
                endpoint=endpoint,
                endpoint_path=endpoint_path,
                principal=principal,
                catalog=catalog,
                parse=parse,
                max_line_bytes=max_line_bytes,
                seen=seen,
            )
        except _Refused as refused:
            if len(result.errors) >= MAX_ERRORS:
                result.truncated = True
                break
            result.errors.append(LineError(refused.code, refused.message, line_no, refused.param))
            continue
        if not result.errors:  # after the first error only errors are gathered
            result.lines.append(line)
    if not result.errors and not result.lines:
        result.errors.append(LineError("empty_file", "The input file holds no requests.", 1))
    if result.errors:
        result.lines = []
    return result


def _check_line(
    raw: bytes,
    *,
    line_no: int,
    endpoint: Endpoint,
    endpoint_path: str,
    principal: Principal,
    catalog: Catalog,
    parse: Parse,
    max_line_bytes: int,
    seen: set[str],
) -> InputLine:
    if len(raw) > max_line_bytes:
        raise _Refused("request_too_large", f"The line is larger than this server's limit of {max_line_bytes} bytes.")
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _Refused("invalid_json_line", "The line is not valid JSON.") from None
    if not isinstance(item, dict):
        raise _Refused("invalid_json_line", "The line must be a JSON object.")
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _Refused("missing_required_parameter", "'custom_id' must be a non-empty string.", "custom_id")
    if len(custom_id) > MAX_CUSTOM_ID_CHARS:
        raise _Refused("invalid_value", f"'custom_id' is longer than {MAX_CUSTOM_ID_CHARS} characters.", "custom_id")
    if custom_id in seen:
        raise _Refused("duplicate_custom_id", "'custom_id' is used by an earlier line of the file.", "custom_id")
    seen.add(custom_id)
    if item.get("method") != "POST":
        raise _Refused("invalid_method", "'method' must be \"POST\".", "method")
    if item.get("url") != endpoint_path:
        raise _Refused("invalid_url", f"'url' must be the batch's endpoint, {endpoint_path}.", "url")
    body = item.get("body")
    if not isinstance(body, dict):
        raise _Refused("missing_required_parameter", "'body' must be a JSON object.", "body")
    _check_model(
        body.get("model"), endpoint=endpoint, endpoint_path=endpoint_path, principal=principal, catalog=catalog
    )
    if body.get("stream") is True:
        raise _Refused("invalid_value", "Streaming is not supported in a batch: 'stream' must be false.", "body.stream")
    try:
        parse(endpoint, orjson.dumps(body))
    except InvalidRequest as error:
        param = f"body.{error.param}" if error.param else "body"
        raise _Refused("invalid_request", error.message, param) from None
    return InputLine(line_no=line_no, custom_id=custom_id, body=body)


def _check_model(
    model: object, *, endpoint: Endpoint, endpoint_path: str, principal: Principal, catalog: Catalog
) -> None:
    """The body's model (or alias) exists, serves this endpoint, and the key may use it."""
    if not isinstance(model, str) or not model:
        raise _Refused("missing_required_parameter", "'body.model' must be a model's name.", "body.model")
    alias = catalog.alias(model)
    if alias is not None:
        kind, allowed = alias.kind, alias_allowed(principal.allowed_models, alias)
    else:
        spec = catalog.get(model)
        if spec is None:
            # Not echoed: an unknown name is the file's text, not a catalogue name.
            raise _Refused("model_not_found", "The model named in 'body.model' does not exist.", "body.model")
        kind, allowed = spec.kind, principal.may_use(model)
    if not allowed:
        raise _Refused("model_not_allowed", f"This key may not use the model '{model}'.", "body.model")
    if kind != _KIND_FOR[endpoint]:
        raise _Refused("invalid_value", f"The model '{model}' does not support {endpoint_path}.", "body.model")
