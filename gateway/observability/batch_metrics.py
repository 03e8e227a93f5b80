"""Batch API metrics (`citadel_llm_batch*`): batches by status, pending lines, lines finished by outcome, and which
process leads the batch runner.

Labels are bounded: `status` is a lifecycle name (BATCH_STATUSES), `endpoint` the short name of the batch's path
(`chat`, `completions`, `embeddings`), `outcome` `done` or `failed`. Never batch, file or key ids.

How workers combine. Only the leading runner (one process across every worker and replica, gateway/batch/runner.py)
reads llm.batches, so the state gauges are `livemax`: every other worker holds 0 (zeroed at start-up), the leader
its counts, and the maximum over the live workers is the leader's value. A leader that stops leading sets its own
back to 0 first, and a dead one's values leave with it. (`livesum` would add a stale ex-leader's values to the new
leader's; `liveall` would need `max without (pid)` in every query.) Across replicas, queries take `max`: one process
of one replica leads. Leadership itself is `livesum`: 1 on the leader, so summed over instances it is the number of
leaders (1; 0 means no runner works).

The wait of batch lines for a model server slot is citadel_llm_queue_wait_seconds{priority="batch"}
(admission_metrics.py): lines are admitted like live requests, so they need no histogram of their own. Lines per
second is a rate of citadel_llm_batch_lines_total, not a metric. Code elsewhere calls the functions below.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge

from ..store.batch_models import BATCH_ENDPOINTS, BATCH_STATUSES
from .metrics import endpoint_label

LINE_OUTCOMES = ("done", "failed")

BATCHES = Gauge(
    "citadel_llm_batches",
    "Batches by lifecycle status, as the leading batch runner last counted them in PostgreSQL",
    ["status"],
    multiprocess_mode="livemax",
)
PENDING_LINES = Gauge(
    "citadel_llm_batch_lines_pending",
    "Lines of in_progress batches not answered yet, as the leading batch runner last counted them",
    multiprocess_mode="livemax",
)
LINES = Counter(
    "citadel_llm_batch_lines_total",
    "Batch lines finished, by the batch's endpoint and outcome (done: answered 200; failed: in the error file)",
    ["endpoint", "outcome"],
)
LEADER = Gauge(
    "citadel_llm_batch_runner_leader",
    "1 while this process leads the batch runner (one across every worker and replica)",
    multiprocess_mode="livesum",
)


def zero_series() -> None:
    """Every batch series at 0 in this process (a runner's start-up), so dashboards and `increase()` see them before
    the first batch, and a worker that does not lead adds nothing to the leader's values."""
    LEADER.set(0)
    _zero_state()
    for path in BATCH_ENDPOINTS:
        for outcome in LINE_OUTCOMES:
            LINES.labels(endpoint_label(path), outcome)


def set_leading(leading: bool) -> None:
    """This process took (True) or let go of (False) the runner's lock; letting go drops its counts to 0, so the
    next leader's values are the ones shown."""
    LEADER.set(1 if leading else 0)
    if not leading:
        _zero_state()


def set_batch_counts(by_status: Mapping[str, int], *, pending_lines: int) -> None:
    """The leader's count of batches per status (a status absent from `by_status` has none) and of pending lines."""
    for status in BATCH_STATUSES:
        BATCHES.labels(status).set(by_status.get(status, 0))
    PENDING_LINES.set(pending_lines)


def count_line(endpoint_path: str, *, done: bool) -> None:
    """One line's result written (once per line: the runner counts only the write that changed it)."""
    LINES.labels(endpoint_label(endpoint_path), "done" if done else "failed").inc()


def _zero_state() -> None:
    for status in BATCH_STATUSES:
        BATCHES.labels(status).set(0)
    PENDING_LINES.set(0)
