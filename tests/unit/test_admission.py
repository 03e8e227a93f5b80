"""The admission gate's mechanics without a server: capacity, fair order across keys, weights, priority classes,
bounds (queue, a key's share, the longest wait), a client that hangs up, and each worker's share of a replica."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from gateway.admission.capacity import gate_capacity, replica_limit
from gateway.admission.fair import FairQueue
from gateway.admission.gate import Bounds, Gate, Ticket
from gateway.admission.priority import Priority, effective_priority
from gateway.errors import ClientClosedRequest, ModelSaturated, QueueShareExceeded
from gateway.observability.admission_metrics import ModelAdmissionMetrics
from gateway.upstream.breaker import CircuitBreaker
from gateway.upstream.replica import LoadReport, Replica

INTERACTIVE, BATCH = Priority.INTERACTIVE, Priority.BATCH


def make_gate(capacity: int | None, *, queue_max: int = 100, key_queue_max: int = 100, max_wait_s: float = 5) -> Gate:
    return Gate(
        capacity=lambda: capacity,
        bounds=Bounds(queue_max=queue_max, key_queue_max=key_queue_max, max_wait_s=max_wait_s),
        metrics=ModelAdmissionMetrics,
    )


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


class Line:
    """Requests entering a gate as tasks; `order` is the order they were let through."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.order: list[str] = []
        self.tickets: dict[str, Ticket] = {}
        self.tasks: dict[str, asyncio.Task[Ticket]] = {}

    async def enter(self, name: str, key: str, *, priority: Priority = INTERACTIVE, weight: float = 1.0) -> None:
        async def go() -> Ticket:
            ticket = await self.gate.enter(key=key, weight=weight, model="m", priority=priority)
            self.order.append(name)
            self.tickets[name] = ticket
            return ticket

        self.tasks[name] = asyncio.create_task(go())
        await settle()

    async def finish(self, name: str) -> None:
        self.tickets[name].release()
        await settle()

    async def drain(self) -> list[str]:
        """Release whoever holds a slot, one at a time, until everyone has been let through."""
        done: set[str] = set()
        while len(done) < len(self.tasks):
            holding = [name for name in self.order if name not in done]
            assert holding, "nobody holds a slot but some still wait"
            done.add(holding[0])
            await self.finish(holding[0])
        return self.order


async def test_a_free_slot_admits_at_once_and_a_full_gate_makes_requests_wait_their_turn() -> None:
    line = Line(make_gate(2))
    for name in ("a", "b", "c"):
        await line.enter(name, key="k")
    assert line.order == ["a", "b"]  # c waits
    assert line.tickets["a"].waited_s == 0
    await line.finish("a")
    assert line.order == ["a", "b", "c"]
    assert line.tickets["c"].waited_s > 0


async def test_a_key_with_one_request_goes_before_the_rest_of_a_flooding_keys_backlog() -> None:
    line = Line(make_gate(1))
    for index in range(6):
        await line.enter(f"flood{index}", key="flood")
    await line.enter("light", key="light")
    order = await line.drain()
    # flood0 held the slot; the light key's one request is next, not behind the five flood requests waiting.
    assert order[:2] == ["flood0", "light"]


async def test_backlogged_keys_take_turns_by_weight() -> None:
    line = Line(make_gate(1))
    await line.enter("hold", key="other")
    for index in range(8):
        await line.enter(f"heavy{index}", key="heavy", weight=2)
        await line.enter(f"light{index}", key="light", weight=1)
    order = [name for name in await line.drain() if name != "hold"]
    first_nine = order[:9]
    heavy = sum(name.startswith("heavy") for name in first_nine)
    assert heavy == 6, order  # 2:1 while both wait


async def test_batch_waits_while_interactive_work_waits_and_never_takes_the_last_slot() -> None:
    line = Line(make_gate(3))
    for index in range(4):
        await line.enter(f"batch{index}", key="bulk", priority=BATCH)
    assert line.order == ["batch0", "batch1"]  # batch holds at most capacity - 1 slots
    await line.enter("chat", key="user")
    assert line.order[-1] == "chat"  # the slot batch left free: no wait at all
    await line.enter("chat2", key="user")  # user has one in flight: it waits
    assert line.order[-1] == "chat"
    await line.enter("chat3", key="user2")  # nothing in flight: the gate's extra slot, at once
    assert line.order[-1] == "chat3"
    await line.finish("batch0")
    assert line.order[-1] == "chat2"  # interactive first, although batch2 waited longer
    await line.finish("chat")
    await line.finish("chat2")
    assert line.order[-1] == "batch2"


async def test_a_key_with_nothing_in_flight_takes_the_one_extra_slot_instead_of_waiting() -> None:
    gate = make_gate(2)
    line = Line(gate)
    for index in range(4):
        await line.enter(f"flood{index}", key="flood")
    assert line.order == ["flood0", "flood1"]
    await line.enter("light", key="light")
    assert line.order[-1] == "light" and line.tickets["light"].waited_s == 0  # above capacity, by one
    await line.enter("light2", key="light")  # light has one in flight now: it queues
    await line.enter("other", key="other")  # the extra slot is taken: it queues too
    assert line.order[-1] == "light"
    await line.finish("light")  # the extra slot freed lets nobody in: it is only ever taken by arrivals
    assert line.order[-1] == "light"
    await line.finish("flood0")
    assert line.order[-1] == "other"  # fair order: "other" had nothing served yet
    await line.finish("flood1")
    await line.finish("other")
    # light2 and flood2 tie (each key had one served), flood3 comes after both.
    assert set(line.order[-2:]) == {"light2", "flood2"}
    assert gate.in_flight[INTERACTIVE] == 2 and not gate.extra_in_use


async def test_a_gate_of_one_slot_still_runs_batch_work_when_nothing_interactive_waits() -> None:
    line = Line(make_gate(1))
    await line.enter("batch", key="bulk", priority=BATCH)
    assert line.order == ["batch"]


async def test_a_full_queue_answers_503_model_saturated_with_a_retry_after() -> None:
    gate = make_gate(1, queue_max=2)
    line = Line(gate)
    for name in ("run", "w1", "w2"):
        await line.enter(name, key="k")
    with pytest.raises(ModelSaturated) as raised:
        await gate.enter(key="k", weight=1, model="m", priority=INTERACTIVE)
    assert raised.value.status_code == 503
    assert raised.value.code == "model_saturated"
    assert int(raised.value.headers["Retry-After"]) >= 1
    await line.drain()


async def test_a_key_past_its_share_of_the_queue_gets_429_while_other_keys_still_queue() -> None:
    gate = make_gate(1, key_queue_max=2)
    line = Line(gate)
    for name in ("run", "w1", "w2"):
        await line.enter(name, key="greedy")
    with pytest.raises(QueueShareExceeded) as raised:
        await gate.enter(key="greedy", weight=1, model="m", priority=INTERACTIVE)
    assert raised.value.status_code == 429
    assert raised.value.code == "queue_share_exceeded"
    assert "Retry-After" in raised.value.headers
    await line.enter("polite", key="polite")  # another key is not refused (it takes the extra slot)
    await line.enter("polite2", key="polite")
    assert gate.queue.waiting() == 3
    await line.drain()


async def test_a_request_that_waits_past_the_longest_wait_gets_503_and_leaves_the_line() -> None:
    gate = make_gate(1, max_wait_s=0.3)
    line = Line(gate)
    await line.enter("run", key="a")
    started = time.monotonic()
    with pytest.raises(ModelSaturated):
        await gate.enter(key="a", weight=1, model="m", priority=INTERACTIVE)
    assert 0.25 < time.monotonic() - started < 2
    assert gate.queue.waiting() == 0


async def test_a_client_that_hangs_up_leaves_the_line_at_once() -> None:
    gate = make_gate(1)
    line = Line(gate)
    await line.enter("run", key="a")
    hung_up = asyncio.Event()
    waiting = asyncio.create_task(
        gate.enter(key="a", weight=1, model="m", priority=INTERACTIVE, disconnected=hung_up.wait)
    )
    await settle()
    assert gate.queue.waiting() == 1
    hung_up.set()
    with pytest.raises(ClientClosedRequest):
        await asyncio.wait_for(waiting, 1)
    assert gate.queue.waiting() == 0
    await line.finish("run")
    assert sum(gate.in_flight.values()) == 0


async def test_a_request_cancelled_just_after_it_was_let_through_gives_its_slot_to_the_next() -> None:
    gate = make_gate(1)
    line = Line(gate)
    await line.enter("run", key="a")
    first = asyncio.create_task(gate.enter(key="a", weight=1, model="m", priority=INTERACTIVE))
    await settle()
    await line.enter("next", key="a")
    line.tickets["run"].release()  # lets `first` through ...
    first.cancel()  # ... which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await first
    await settle()
    assert line.order[-1] == "next"
    assert gate.in_flight[INTERACTIVE] == 1


async def test_no_replica_in_rotation_lets_requests_through_to_the_pools_own_503() -> None:
    line = Line(make_gate(None))
    for name in ("a", "b", "c"):
        await line.enter(name, key="k")
    assert line.order == ["a", "b", "c"]


async def test_a_waiter_is_let_through_when_capacity_grows_without_a_release() -> None:
    capacity = [1]
    gate = Gate(
        capacity=lambda: capacity[0],
        bounds=Bounds(queue_max=10, key_queue_max=10, max_wait_s=5),
        metrics=ModelAdmissionMetrics,
    )
    held = await gate.enter(key="a", weight=1, model="m", priority=INTERACTIVE)
    waiting = asyncio.create_task(gate.enter(key="a", weight=1, model="m", priority=INTERACTIVE))
    await settle()
    capacity[0] = 2  # a replica came back
    ticket = await asyncio.wait_for(waiting, 2)
    ticket.release()
    held.release()


async def test_release_is_idempotent() -> None:
    gate = make_gate(1)
    ticket = await gate.enter(key="a", weight=1, model="m", priority=INTERACTIVE)
    ticket.release()
    ticket.release()
    assert gate.in_flight[INTERACTIVE] == 0


def test_the_saturation_an_alias_reads() -> None:
    gate = make_gate(1)
    assert not gate.saturated()
    gate.in_flight[INTERACTIVE] = 1
    assert gate.saturated()


# ---- the line's order alone -------------------------------------------------------------------------------------


async def test_a_key_served_alone_builds_up_no_debt_and_an_idle_key_no_credit() -> None:
    queue = FairQueue()
    for _ in range(50):  # "alone" is let through at once, again and again, with nobody else around
        queue.served_at_once(key="alone", weight=1, priority=INTERACTIVE)
    # Then "late" arrives with two requests while "alone" keeps sending: they take turns from now on, "alone"
    # does not wait behind 50 of "late"'s, and "late" does not get 50 turns in a row.
    for _ in range(3):
        queue.push(key="late", weight=1, model="m", priority=INTERACTIVE, now=0)
        queue.push(key="alone", weight=1, model="m", priority=INTERACTIVE, now=0)
    keys = [queue.pop(INTERACTIVE).key for _ in range(6)]
    assert keys == ["late", "alone", "late", "alone", "late", "alone"], keys


# ---- priority classes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "key_class", "expected"),
    [
        (None, INTERACTIVE, INTERACTIVE),
        ("batch", INTERACTIVE, BATCH),
        ("Interactive", INTERACTIVE, INTERACTIVE),
        ("interactive", BATCH, BATCH),  # never above the key's class
        ("", BATCH, BATCH),
    ],
)
def test_a_request_runs_in_the_class_it_asks_for_never_above_its_keys(
    asked: str | None, key_class: Priority, expected: Priority
) -> None:
    assert effective_priority(asked, key_class) is expected


def test_an_unknown_class_is_refused() -> None:
    with pytest.raises(ValueError):
        effective_priority("urgent", INTERACTIVE)


# ---- each worker's share of a replica ---------------------------------------------------------------------------


def replica(*, running: float = 0, waiting: float = 0, ours: int = 0, kv: float = 0.0, fresh: bool = True) -> Replica:
    made = Replica(
        url="http://r:1", models=["m"], breaker=CircuitBreaker(failure_threshold=3, cooldown_s=1, max_cooldown_s=1)
    )
    at = time.monotonic() if fresh else time.monotonic() - 3600
    made.load = LoadReport(waiting=waiting, running=running, kv_cache_usage=kv, at=at, ours=ours)
    return made


Limit = Callable[..., int]


@pytest.mark.parametrize(
    ("figures", "workers", "expected"),
    [
        ({}, 1, 4),  # one worker: the whole replica
        ({"fresh": False}, 2, 2),  # two workers: a share each
        ({"running": 0}, 2, 2),  # the other worker idle: no borrowing (both could at once)
        ({"running": 3, "ours": 1}, 2, 2),  # the other worker within its share
        ({"running": 5, "waiting": 1, "ours": 1}, 2, 1),  # 2 more than the shares explain: someone else's
        ({"running": 2, "ours": 0}, 1, 2),  # another gateway runs 2 there: one worker gets the rest
        ({"running": 9, "ours": 0}, 1, 1),  # ... and never less than one
        ({"running": 1, "ours": 1, "kv": 0.95}, 1, 2),  # KV cache nearly full: half
        ({"running": 4, "ours": 4}, 1, 4),  # its own requests are not someone else's
    ],
)
def test_a_workers_limit_for_a_replica(figures: dict[str, float], workers: int, expected: int) -> None:
    assert replica_limit(replica(**figures), concurrency=4, workers=workers, fresh_s=15) == expected  # type: ignore[arg-type]


def test_a_gate_counts_only_replicas_in_rotation() -> None:
    up, down = replica(), replica()
    down.healthy = False
    assert gate_capacity([up, down], concurrency=3, workers=1, fresh_s=15) == 3
    assert gate_capacity([down], concurrency=3, workers=1, fresh_s=15) is None
