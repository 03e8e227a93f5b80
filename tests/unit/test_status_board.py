"""The status page's admission figures: the queue gauges of every worker summed per model, and saturation told
the way readiness tells it (interactive requests wait, or every slot is taken)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge

from gateway.api.status_page import HTML
from gateway.catalog import load_catalog
from gateway.observability.window import ModelCounts, Snapshot, StatusBoard, snapshot
from tests.support.catalogs import chat_entry, write_models_file


def registry(**per_model: tuple[float | None, float, float, float]) -> CollectorRegistry:
    """Gauges named like the gateway's, with a `pid` label as when workers are not merged: model -> (capacity,
    in flight, interactive waiting, batch waiting) split over two workers."""
    found = CollectorRegistry()
    capacity = Gauge("citadel_llm_admission_capacity", "", ["model", "pid"], registry=found)
    in_flight = Gauge("citadel_llm_admission_in_flight", "", ["model", "pid"], registry=found)
    depth = Gauge("citadel_llm_queue_depth", "", ["model", "priority", "pid"], registry=found)
    for model, (cap, flying, interactive, batch) in per_model.items():
        for pid in ("1", "2"):
            if cap is not None:
                capacity.labels(model, pid).set(cap / 2)
            in_flight.labels(model, pid).set(flying / 2)
            depth.labels(model, "interactive", pid).set(interactive / 2)
            depth.labels(model, "batch", pid).set(batch / 2)
    return found


def board(tmp_path: Path, *names: str) -> StatusBoard:
    models = {name: chat_entry("http://127.0.0.1:9") for name in names}
    return StatusBoard(load_catalog(write_models_file(tmp_path / "models.yaml", models), env={}))


def admission_of(tmp_path: Path, shot: Snapshot, name: str) -> object:
    row = board(tmp_path, name)._row(name, "M", 100, ModelCounts(), ModelCounts(), 60.0, shot)
    return row["admission"]


def test_the_workers_gauges_are_summed_per_model(tmp_path: Path) -> None:
    shot = snapshot(registry(busy=(4, 4, 6, 2), calm=(8, 2, 0, 0)).collect(), at=0.0)
    assert admission_of(tmp_path, shot, "busy") == {
        "capacity": 4,
        "in_flight": 4,
        "waiting": {"interactive": 6, "batch": 2},
        "saturated": True,
    }
    assert admission_of(tmp_path, shot, "calm") == {
        "capacity": 8,
        "in_flight": 2,
        "waiting": {"interactive": 0, "batch": 0},
        "saturated": False,
    }


def test_saturated_when_every_slot_is_taken_or_interactive_work_waits(tmp_path: Path) -> None:
    full = snapshot(registry(m=(2, 2, 0, 0)).collect(), at=0.0)
    assert admission_of(tmp_path, full, "m")["saturated"] is True  # type: ignore[index]
    waiting = snapshot(registry(m=(4, 2, 2, 0)).collect(), at=0.0)  # a worker full, another not yet
    assert admission_of(tmp_path, waiting, "m")["saturated"] is True  # type: ignore[index]
    # Batch waits while it leaves interactive work a slot: that is not saturation for interactive requests.
    batch_only = snapshot(registry(m=(4, 3, 0, 5)).collect(), at=0.0)
    assert admission_of(tmp_path, batch_only, "m")["saturated"] is False  # type: ignore[index]


def test_no_replica_in_rotation_or_no_figures_is_never_saturated(tmp_path: Path) -> None:
    # Capacity 0: no replica in rotation; requests are not held (they get model_unavailable at once).
    down = snapshot(registry(m=(0, 0, 0, 0)).collect(), at=0.0)
    assert admission_of(tmp_path, down, "m") == {
        "capacity": None,
        "in_flight": 0,
        "waiting": {"interactive": 0, "batch": 0},
        "saturated": False,
    }
    # Admission off, or no request yet: no gauges at all.
    assert admission_of(tmp_path, snapshot([], at=0.0), "m") is None


def test_the_data_carries_the_figures_whichever_worker_reads_them(tmp_path: Path) -> None:
    status = board(tmp_path, "busy", "idle")
    shared = registry(busy=(2, 2, 3, 1))
    status.read = lambda: snapshot(shared.collect(), at=1.0)  # type: ignore[method-assign]
    rows = {row["model"]: row for row in status.data()["models"]}
    assert rows["busy"]["admission"]["waiting"] == {"interactive": 3, "batch": 1}
    assert rows["busy"]["admission"]["saturated"] is True
    assert rows["idle"]["admission"] is None


def test_the_page_has_the_admission_columns() -> None:
    page = HTML.decode()
    assert "<th>In flight</th><th>Waiting</th></tr>" in page
    assert "capacity" in page and "interactive / batch" in page and "saturated" in page
