"""A batch input file's validation (gateway/batch/validate.py): good lines become typed lines; any bad line fails
the file with errors naming 1-based line numbers and never quoting the line."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.auth import Principal, Role
from gateway.batch.validate import MAX_ERRORS, validate_input
from gateway.catalog import AliasSpec, Catalog, ModelSpec
from gateway.inference import InferenceService
from tests.conftest import make_settings
from tests.support.catalogs import chat_entry

CHAT = "/v1/chat/completions"
SECRET = "do-not-echo-this-prompt"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> InferenceService:
    chat = ModelSpec(name="chat", **chat_entry("http://x", max_tokens=64))  # type: ignore[arg-type]
    other = ModelSpec(name="other", **chat_entry("http://x"))  # type: ignore[arg-type]
    embed = ModelSpec(name="embed", **{**chat_entry("http://x"), "kind": "embedding"})  # type: ignore[arg-type]
    catalog = Catalog(
        models={"chat": chat, "other": other, "embed": embed},
        servers=[],
        aliases={"fast": AliasSpec(name="fast", targets=("chat", "other"), kind="chat")},
    )
    settings = make_settings(Path(tmp_path_factory.mktemp("batch")) / "models.yaml")
    return InferenceService(settings=settings, catalog=catalog, pool=None)  # type: ignore[arg-type]


def principal(allowed: frozenset[str] | None = None) -> Principal:
    return Principal(key_id=uuid.uuid4(), name="k", role=Role.USER, allowed_models=allowed)


def line(custom_id: object = "a", *, url: str = CHAT, method: str = "POST", **body: Any) -> bytes:
    body = body or {"model": "chat", "messages": [{"role": "user", "content": SECRET}]}
    return orjson.dumps({"custom_id": custom_id, "method": method, "url": url, "body": body})


def check(service: InferenceService, *lines: bytes, who: Principal | None = None, endpoint: str = CHAT) -> Any:
    return validate_input(
        b"\n".join(lines),
        endpoint_path=endpoint,
        principal=who or principal(),
        catalog=service.catalog,
        parse=service.parse,
        max_line_bytes=4096,
    )


def test_good_lines_become_typed_lines_in_file_order(service: InferenceService) -> None:
    result = check(service, line("a"), b"", line("b"), b"\r", b"")
    assert result.ok
    assert [(item.line_no, item.custom_id) for item in result.lines] == [(1, "a"), (3, "b")]
    assert result.lines[0].body["model"] == "chat"


def test_an_alias_the_key_may_call_is_accepted(service: InferenceService) -> None:
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    assert check(service, line("a", **body), who=principal(frozenset({"other"}))).ok


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [
        (b"{not json", "invalid_json_line", None),
        (b"[1, 2]", "invalid_json_line", None),
        (line(None), "missing_required_parameter", "custom_id"),
        (line(""), "missing_required_parameter", "custom_id"),
        (line(7), "missing_required_parameter", "custom_id"),
        (line("x" * 513), "invalid_value", "custom_id"),
        (line("b", method="GET"), "invalid_method", "method"),
        (line("b", url="/v1/embeddings"), "invalid_url", "url"),
        (
            orjson.dumps({"custom_id": "b", "method": "POST", "url": CHAT, "body": [1]}),
            "missing_required_parameter",
            "body",
        ),
        (line("b", messages=[{"role": "user", "content": "x"}]), "missing_required_parameter", "body.model"),
        (line("b", model="nope-" + SECRET, messages=[]), "model_not_found", "body.model"),
        (line("b", model="embed", input="x"), "invalid_value", "body.model"),
        (
            line("b", model="chat", messages=[{"role": "user", "content": "x"}], stream=True),
            "invalid_value",
            "body.stream",
        ),
        (line("b", model="chat", messages="not a list"), "invalid_request", "body.messages"),
        (line("b", model="chat", messages=[{"role": "user", "content": "x" * 5000}]), "request_too_large", None),
    ],
)
def test_a_bad_line_fails_the_file_naming_its_line(
    service: InferenceService, raw: bytes, code: str, param: str | None
) -> None:
    result = check(service, line("a"), raw, line("c"))
    assert not result.ok and result.lines == []
    assert [(error.line, error.code, error.param) for error in result.errors] == [(2, code, param)]
    assert SECRET not in orjson.dumps(result.errors_json()).decode()  # no line content in the errors


def test_a_duplicate_custom_id_is_refused(service: InferenceService) -> None:
    result = check(service, line("a"), line("b"), line("a"))
    assert [(error.line, error.code) for error in result.errors] == [(3, "duplicate_custom_id")]


def test_a_model_outside_the_keys_allow_list_is_refused(service: InferenceService) -> None:
    result = check(service, line("a"), who=principal(frozenset({"other"})))
    assert [(error.line, error.code) for error in result.errors] == [(1, "model_not_allowed")]
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    refused = check(service, line("a", **body), who=principal(frozenset({"embed"})))
    assert [error.code for error in refused.errors] == ["model_not_allowed"]


def test_every_bad_line_is_listed_up_to_a_bound(service: InferenceService) -> None:
    result = check(service, line("a"), b"{", line("b"), b"{")
    assert [error.line for error in result.errors] == [2, 4]
    many = check(service, *[b"{"] * (MAX_ERRORS + 5))
    assert len(many.errors) == MAX_ERRORS and many.truncated


def test_an_empty_file_is_refused(service: InferenceService) -> None:
    result = check(service, b"", b"  ")
    assert [error.code for error in result.errors] == ["empty_file"]


def test_the_errors_object_is_openais_shape(service: InferenceService) -> None:
    errors = check(service, b"{").errors_json()
    assert errors == {
        "object": "list",
        "data": [{"code": "invalid_json_line", "message": "The line is not valid JSON.", "line": 1, "param": None}],
    }


def test_embeddings_lines_check_against_the_embeddings_request(service: InferenceService) -> None:
    emb = "/v1/embeddings"
    good = orjson.dumps({"custom_id": "e", "method": "POST", "url": emb, "body": {"model": "embed", "input": "x"}})
    assert check(service, good, endpoint=emb).ok
    wrong = orjson.dumps({"custom_id": "e", "method": "POST", "url": emb, "body": {"model": "embed"}})
    assert [error.param for error in check(service, wrong, endpoint=emb).errors] == ["body.input"]
