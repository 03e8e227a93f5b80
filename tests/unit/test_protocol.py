"""Request parsing: what a client sends wrong becomes a 400 naming the field, never a 422 or a 500."""

import pytest

from gateway.errors import InvalidRequest
from gateway.protocol.chat import ChatCompletionRequest
from gateway.protocol.common import parse_request
from gateway.protocol.embeddings import EmbeddingRequest

CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (b"", None, "empty"),
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b'"text"', None, "JSON object"),
        (b'{"model": 3, "messages": []}', "model", "valid string"),
        (b'{"model": "m", "messages": []}', "messages", "at least 1"),
        (CHAT + b', "temperature": "0.5"}', "temperature", "valid number"),
        (CHAT + b', "temperature": 9}', "temperature", "less than or equal"),
        (CHAT + b', "max_tokens": 1.5}', "max_tokens", "valid integer"),
        (CHAT + b', "stream": "yes"}', "stream", "valid boolean"),
        (CHAT + b', "stop": ["a", "b", "c", "d", "e"]}', "stop", None),
        (b'{"model": "m", "messages": [{"role": "robot", "content": "x"}]}', "messages.0.role", None),
    ],
)
def test_bad_chat_requests_are_400_with_the_field(body: bytes, param: str | None, fragment: str | None) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(ChatCompletionRequest, body)
    error = caught.value
    assert error.status_code == 400
    if param:
        assert error.param is not None and error.param.startswith(param)
    if fragment:
        assert fragment in error.message


def test_unknown_fields_are_dropped_and_ints_are_numbers() -> None:
    request = parse_request(ChatCompletionRequest, CHAT + b', "temperature": 1, "guided_json": {"x": 1}}')
    dumped = request.model_dump(exclude_unset=True)
    assert dumped == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 1.0}


def test_error_messages_do_not_echo_the_input() -> None:
    secret = "very-private-prompt-text"
    with pytest.raises(InvalidRequest) as caught:
        parse_request(ChatCompletionRequest, b'{"model": "m", "messages": [{"role": "' + secret.encode() + b'"}]}')
    assert secret not in caught.value.message


@pytest.mark.parametrize(
    ("body", "count"),
    [
        (b'{"model": "e", "input": "one"}', 1),
        (b'{"model": "e", "input": ["a", "b", "c"]}', 3),
        (b'{"model": "e", "input": [1, 2, 3]}', 1),
        (b'{"model": "e", "input": [[1, 2], [3]]}', 2),
    ],
)
def test_embedding_input_count(body: bytes, count: int) -> None:
    assert parse_request(EmbeddingRequest, body).input_count() == count


@pytest.mark.parametrize("body", [b'{"model": "e", "input": ""}', b'{"model": "e", "input": []}', b'{"model": "e"}'])
def test_empty_embedding_input_is_400(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        parse_request(EmbeddingRequest, body)
