"""The batch metrics: series at zero from start-up, the leader's counts per status (absent statuses at 0), lines by
short endpoint name and outcome, leadership; how the gauges combine over workers; and the status page's batch
section failing soft and hiding ids from a caller without a key."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from gateway.api.status_page import HTML
from gateway.auth import Principal, Role
from gateway.observability import batch_metrics
from gateway.observability.batch_status import BatchSection, RunningBatch, status_section
from gateway.store.batch_models import BATCH_STATUSES


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_every_series_exists_at_zero_after_start_up() -> None:
    batch_metrics.zero_series()
    assert value("citadel_llm_batch_runner_leader") == 0
    assert value("citadel_llm_batch_lines_pending") == 0
    for status in BATCH_STATUSES:
        assert value("citadel_llm_batches", status=status) == 0, status
    for endpoint in ("chat", "completions", "embeddings"):
        for outcome in ("done", "failed"):
            assert value("citadel_llm_batch_lines_total", endpoint=endpoint, outcome=outcome) is not None


def test_the_leaders_counts_replace_the_last_ones_and_absent_statuses_are_zero() -> None:
    batch_metrics.set_batch_counts({"in_progress": 3, "completed": 12}, pending_lines=250)
    assert value("citadel_llm_batches", status="in_progress") == 3
    assert value("citadel_llm_batches", status="completed") == 12
    assert value("citadel_llm_batch_lines_pending") == 250
    batch_metrics.set_batch_counts({"completed": 15}, pending_lines=0)
    assert value("citadel_llm_batches", status="in_progress") == 0
    assert value("citadel_llm_batches", status="completed") == 15
    assert value("citadel_llm_batch_lines_pending") == 0


def test_a_status_outside_the_lifecycle_makes_no_series() -> None:
    batch_metrics.set_batch_counts({"weird": 1}, pending_lines=0)
    assert value("citadel_llm_batches", status="weird") is None


def test_letting_go_of_the_lead_drops_this_processs_counts() -> None:
    batch_metrics.set_leading(True)
    batch_metrics.set_batch_counts({"validating": 1, "in_progress": 2}, pending_lines=40)
    assert value("citadel_llm_batch_runner_leader") == 1
    batch_metrics.set_leading(False)
    assert value("citadel_llm_batch_runner_leader") == 0
    assert value("citadel_llm_batches", status="in_progress") == 0
    assert value("citadel_llm_batch_lines_pending") == 0


def test_lines_are_counted_by_short_endpoint_name_and_outcome() -> None:
    before = {
        (endpoint, outcome): value("citadel_llm_batch_lines_total", endpoint=endpoint, outcome=outcome) or 0.0
        for endpoint in ("chat", "embeddings", "other")
        for outcome in ("done", "failed")
    }
    batch_metrics.count_line("/v1/chat/completions", done=True)
    batch_metrics.count_line("/v1/chat/completions", done=True)
    batch_metrics.count_line("/v1/embeddings", done=False)
    batch_metrics.count_line("/v1/unknown", done=True)  # never a free-text label
    after = {key: value("citadel_llm_batch_lines_total", endpoint=key[0], outcome=key[1]) for key in before}
    assert {key: (after[key] or 0.0) - before[key] for key in before} == {
        ("chat", "done"): 2,
        ("chat", "failed"): 0,
        ("embeddings", "done"): 0,
        ("embeddings", "failed"): 1,
        ("other", "done"): 1,
        ("other", "failed"): 0,
    }


def test_the_gauges_show_the_leaders_value_over_live_workers() -> None:
    # Non-leaders hold 0 and a leader that lets go zeroes its own: the max over live workers is the leader's.
    assert batch_metrics.BATCHES._multiprocess_mode == "livemax"
    assert batch_metrics.PENDING_LINES._multiprocess_mode == "livemax"
    # 1 on the leader: summed, the number of leaders.
    assert batch_metrics.LEADER._multiprocess_mode == "livesum"


def test_the_status_page_has_a_batches_section_filled_as_text() -> None:
    page = HTML.decode()
    assert 'id="batchsection"' in page and "<h2>Batches</h2>" in page
    assert "innerHTML" not in page  # ids go in as text


ADMIN = Principal(key_id=uuid.uuid4(), name="ops", role=Role.ADMIN)
USER = Principal(key_id=uuid.uuid4(), name="researcher", role=Role.USER)


class FailingSessions:
    """A sessionmaker whose database is down."""

    def __call__(self) -> Any:
        @asynccontextmanager
        async def session() -> AsyncIterator[None]:
            raise ConnectionRefusedError("no database")
            yield

        return session()


async def test_without_a_database_there_is_no_section() -> None:
    assert await status_section(None, ADMIN) is None


@pytest.mark.parametrize(("principal", "scope"), [(ADMIN, "all"), (USER, "own"), (None, "none")])
async def test_a_database_that_does_not_answer_leaves_the_section_unavailable(
    principal: Principal | None, scope: str
) -> None:
    section = await status_section(cast(Any, FailingSessions()), principal)
    assert section == BatchSection(available=False, scope=scope, running=None)
    assert section.as_json() == {"available": False, "scope": scope, "running": None, "batches": []}


def test_a_running_batch_shows_ids_and_counts_only() -> None:
    batch = RunningBatch("batch_1", "/v1/embeddings", "in_progress", 5, 1, 9, 1_700_000_000)
    assert set(batch.as_json()) == {"id", "endpoint", "status", "completed", "failed", "total", "created_at"}
