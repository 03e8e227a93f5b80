"""The fuzz tier: schemathesis drives every operation of the running gateway's OpenAPI schema on the real stack (real
vLLM CPU servers, PostgreSQL, Redis, embedded Qdrant: the session's `gateway_url`), as five callers: no key, a wrong
key, and viewer, user and admin keys.

Every answer must be: no 5xx; a status the schema declares for the operation, with a declared content type and a
body that matches the declared schema (JSON, or SSE event by event); a non-2xx in OpenAI's error shape. The cases
(tests/e2e/fuzzing.py) are schemathesis's, valid and invalid, steered to keep generation short and to reach real
models and objects, plus requests written the way a client writes them.

Bounded and repeatable: EXAMPLES cases per operation and caller, from a fixed seed per operation and caller (the
same cases every run, for the same schema), no shrinking (a failure is reported as found), no deadline. A table of the
statuses each operation and caller got is printed at the end (what the cases reached, not only that they passed).

CITADEL_FUZZ_URL (and CITADEL_FUZZ_ADMIN_KEY) run the tier against a gateway that is already up, e.g. `make run`'s.
"""

from __future__ import annotations

import os
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import ROUTERS
from tests.e2e.fuzzing import COLLECTIONS, DOCUMENT, RATED, SESSIONS, assert_openai_error, strategy
from tests.support.catalogs import ADMIN_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROLES = ("none", "wrong", "viewer", "user", "admin")
# Cases per operation and caller. A request refused at the door (401) costs ~2 ms; the keyed ones reach the
# database, the vector store or the model servers.
# CITADEL_FUZZ_SCALE multiplies them for a deeper run by hand (with other seeds: CITADEL_FUZZ_SEED).
SCALE = float(os.environ.get("CITADEL_FUZZ_SCALE", "1"))
EXAMPLES = {
    role: max(1, round(n * SCALE)) for role, n in {"none": 4, "wrong": 4, "viewer": 12, "user": 25, "admin": 25}.items()
}
SEED = os.environ.get("CITADEL_FUZZ_SEED", "")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Readiness answers 503 by design when a probe fails (a loaded machine can make one time out); its body is checked.
READINESS_CHECKS = [check for check in CHECKS if check is not not_a_server_error]
# Deletions last, so that the seeded objects are there for the other operations.
OPERATIONS = sorted(
    (
        (method, route.path)
        for router in ROUTERS
        for route in router.routes
        if getattr(route, "include_in_schema", False)
        for method in getattr(route, "methods", ())
    ),
    key=lambda operation: (operation[0] == "DELETE", operation[1], operation[0]),
)
# uvicorn's own answer to a request its HTTP parser refuses (uvicorn/protocols/http/httptools_impl.py).
UVICORN_PARSER_REFUSAL = b"Invalid HTTP request received."
# (operation, caller) -> statuses seen.
SEEN: dict[tuple[str, str], Counter[int]] = {}


@pytest.fixture(scope="module")
def target(request: pytest.FixtureRequest) -> tuple[str, str]:
    """The gateway's URL and its admin key: the session's stack, or CITADEL_FUZZ_URL."""
    url = os.environ.get("CITADEL_FUZZ_URL")
    if url:
        return url.rstrip("/"), os.environ.get("CITADEL_FUZZ_ADMIN_KEY", ADMIN_KEY)
    return request.getfixturevalue("gateway_url"), ADMIN_KEY


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def callers(target: tuple[str, str], http: requests.Session) -> dict[str, dict[str, str]]:
    """Authorization headers per caller. Viewer and user keys are made through the admin API with limits high enough
    that the fuzzer is not answered 429 all along (the 429s stay declared and checked)."""
    url, admin_key = target
    headers = {"none": {}, "wrong": {"Authorization": "Bearer ck_" + uuid.uuid4().hex + "0" * 11}}
    headers["admin"] = {"Authorization": f"Bearer {admin_key}"}
    for role in ("viewer", "user"):
        limits = {"requests_per_minute": 1_000_000, "tokens_per_minute": 10**9, "control_requests_per_minute": 10**6}
        answer = http.post(
            f"{url}/admin/keys", json={"name": f"fuzz-{role}", "role": role, **limits}, headers=headers["admin"]
        )
        assert answer.status_code == 201, answer.text
        headers[role] = {"Authorization": f"Bearer {answer.json()['key']}"}
    return headers


@pytest.fixture(scope="module")
def seeded(target: tuple[str, str], http: requests.Session, callers: dict[str, dict[str, str]]) -> None:
    """What the aimed cases find: the user's collection and a shared one with a document each, a conversation
    session of the user and one of the admin, and a chat of each with a known request id (to rate)."""
    url, _ = target
    for role, name, session in (("user", COLLECTIONS[0], SESSIONS[0]), ("admin", COLLECTIONS[1], SESSIONS[1])):
        headers = callers[role]
        http.delete(f"{url}/v1/vectors/collections/{name}", headers=callers["admin"])  # a former run's, if any
        made = http.post(
            f"{url}/v1/vectors/collections", json={"name": name, "shared": role == "admin"}, headers=headers
        )
        assert made.status_code == 200, made.text
        document = {"id": DOCUMENT, "text": "The fuzz tier's document.", "metadata": {"topic": "fuzz", "year": 2025}}
        added = http.post(
            f"{url}/v1/vectors/collections/{name}/documents", json={"documents": [document]}, headers=headers
        )
        assert added.status_code == 200, added.text
        chat = {"model": "phi3", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
        extra = {"X-Session-ID": session, "X-Request-ID": RATED[role]}
        answered = http.post(f"{url}/v1/chat/completions", json=chat, headers={**headers, **extra}, timeout=120)
        assert answered.status_code == 200, answered.text


@pytest.fixture(scope="module")
def api_schema(target: tuple[str, str]) -> Any:
    url, admin_key = target
    return schemathesis.openapi.from_url(f"{url}/openapi.json", headers={"Authorization": f"Bearer {admin_key}"})


@pytest.fixture(scope="module", autouse=True)
def report(request: pytest.FixtureRequest) -> Iterator[None]:
    """At the end: per operation, the statuses each caller got."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not SEEN:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("\nfuzz tier: the statuses each caller got (status x count)")
        for method, path in OPERATIONS:
            got = [(role, SEEN.get((f"{method} {path}", role))) for role in ROLES]
            line = "  ".join(f"{role} " + ",".join(f"{s}x{n}" for s, n in sorted(c.items())) for role, c in got if c)
            reporter.write_line(f"  {method} {path}: {line}")


def test_the_schema_covers_every_route(api_schema: Any) -> None:
    """The operations fuzzed below are exactly the ones the running gateway documents."""
    documented = {(method.upper(), path) for path, item in api_schema.raw_schema["paths"].items() for method in item}
    assert documented == set(OPERATIONS)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz(
    api_schema: Any,
    target: tuple[str, str],
    http: requests.Session,
    callers: dict[str, dict[str, str]],
    seeded: None,
    method: str,
    path: str,
    role: str,
) -> None:
    url, _ = target
    operation = api_schema[path][method]
    headers = callers[role]
    seen = SEEN.setdefault((f"{method} {path}", role), Counter())

    @hypothesis.seed(zlib.crc32(f"{SEED}{method} {path} {role}".encode()))  # repeatable, different per caller
    @hypothesis.settings(
        max_examples=EXAMPLES[role],
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @hypothesis.given(case=strategy(operation))
    def fuzz(case: Any) -> None:
        if case.headers:  # the credential is the caller's, never a generated one
            case.headers.pop("Authorization", None)
        # A copy: the transport adds its own headers to the dict it is given.
        response = case.call(base_url=url, session=http, headers=dict(headers), timeout=120)
        seen[response.status_code] += 1
        if response.status_code == 400 and response.content == UVICORN_PARSER_REFUSAL:
            # Bytes that are not HTTP (a generated header value with a control character, say): uvicorn's parser
            # answers them itself before any gateway code runs (tests/integration/test_audit_completeness.py).
            return
        readiness = path == "/health/ready"  # its 503 body is the readiness document (checked by the schema)
        case.validate_response(response, checks=READINESS_CHECKS if readiness else CHECKS, headers=headers)
        if not (readiness and response.status_code == 503):
            assert_openai_error(response.status_code, response.content)

    fuzz()
