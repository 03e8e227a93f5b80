"""What a client sees when a model server fails in the less common ways: an error page that is not JSON, a
connection reset mid-request, a transport error nobody planned for. Always the model's name, never the
server's text or address; retried only when the server cannot have acted on the request."""

from __future__ import annotations

import errno
import logging

import aiohttp
import pytest

from gateway.catalog import ModelSpec
from gateway.errors import UpstreamError
from gateway.upstream.failures import classify, status_failure, translate_errors
from tests.support.catalogs import chat_entry

SPEC = ModelSpec(name="m", **chat_entry("http://10.1.2.3:8001", upstream_model="served"))  # type: ignore[arg-type]


def test_an_error_page_that_is_not_json_is_not_passed_on() -> None:
    failure = status_failure(SPEC, 400, b"<html><body>400 Bad Request (nginx at 10.1.2.3)</body></html>")
    assert failure.error.status_code == 400
    assert failure.error.message == "The model server for 'm' failed to process the request."
    assert failure.kind is None  # a 4xx is the request's fault, not the replica's


@pytest.mark.parametrize("code", [errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED])
def test_a_connection_reset_under_the_request_is_broken_and_may_go_elsewhere(code: int) -> None:
    failure = classify(aiohttp.ClientOSError(code, "reset"), SPEC)
    assert (failure.kind, failure.retry_reason) == ("broken", "reset")
    assert failure.error.message == "The connection to the model 'm' broke."


def test_an_unforeseen_transport_error_is_a_broken_exchange_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.upstream.failures"):
        failure = classify(aiohttp.ClientOSError(errno.EHOSTUNREACH, "No route to host 10.1.2.3"), SPEC)
    assert (failure.kind, failure.retry_reason) == ("broken", None)
    assert "10.1.2.3" not in failure.error.message
    assert f"ClientOSError (errno {errno.EHOSTUNREACH})" in caplog.text and "10.1.2.3" not in caplog.text


def test_failures_after_the_answer_started_become_the_clients_error() -> None:
    with pytest.raises(UpstreamError) as raised, translate_errors(SPEC):
        raise aiohttp.ClientPayloadError("Response payload is not completed")
    assert raised.value.message == "The connection to the model 'm' broke."
    assert raised.value.status_code == 502
