"""GET /metrics, correct with several worker processes, and the HTTP-layer metrics (recorded by the request layer).

With `citadel serve --workers N` (N > 1) the parent points PROMETHEUS_MULTIPROC_DIR at a fresh folder
before any worker starts: every worker's prometheus_client then keeps its values in files there, and a
scrape, whichever worker answers it, adds up all of them (MultiProcessCollector). Counters of a worker
that died stay in the sum (they happened); its live gauges are dropped at the next scrape.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, Summary, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_fastapi_instrumentator.routing import get_route_name
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from ..auth import Permission, public, require
from ..services import services_of
from .metrics import set_audit_state

if TYPE_CHECKING:
    from ..audit.writer import AuditLog

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_PATH = "/metrics"
_FILE_PID = re.compile(r"_(\d+)\.db$")


def prepare_multiprocess_dir(path: Path) -> None:
    """Create the folder or delete an earlier run's metric files from it (those only: it may be a folder
    the operator named), and point prometheus_client at it; call before any worker starts."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def scrape_registry() -> CollectorRegistry:
    """The registry to read: every worker's values (multiprocess mode), else this process's."""
    if multiprocess_dir() is None:
        return REGISTRY
    mark_dead_workers()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def mark_dead_workers() -> None:
    """Drop the live gauges (livesum, livemax, ...) of workers that have exited (uvicorn restarts them)."""
    directory = multiprocess_dir()
    if directory is None:
        return
    pids = {int(m.group(1)) for name in os.listdir(directory) if (m := _FILE_PID.search(name))}
    for pid in pids:
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def refresh_audit_gauges(audit: AuditLog) -> None:
    """Read this worker's audit writer into the audit gauges (at scrape time, not on every request)."""
    set_audit_state(
        queue_depth=audit.queue_depth,
        spooled_rows=max(0, audit.spooled_rows - audit.replayed_rows),
        spool_bytes=audit.spool_bytes,
    )


def metrics_router(*, public_access: bool) -> APIRouter:
    """GET /metrics: public (Prometheus scrapes without a key) or for keys with usage:read (viewer keys)."""
    guard: Callable[..., Any] = public if public_access else require(Permission.USAGE_READ)
    router = APIRouter(tags=["observability"])

    @router.get(METRICS_PATH, dependencies=[Depends(guard)], include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus text format: the gateway's `citadel_llm_*` metrics and the HTTP layer's."""
        refresh_audit_gauges(services_of(request.app).audit)
        return Response(generate_latest(scrape_registry()), media_type=CONTENT_TYPE_LATEST)

    return router


# The HTTP layer's metrics: the names, labels and buckets of prometheus-fastapi-instrumentator's defaults (which
# made them before; dashboards and alert rules use them), recorded by the request layer instead of a layer of its own.
HTTP_REQUESTS = Counter(
    "http_requests_total", "Total number of requests by method, status and handler.", ("method", "status", "handler")
)
HTTP_REQUEST_SIZE = Summary(
    "http_request_size_bytes",
    "Content length of incoming requests by handler. Only value of header is respected. Otherwise ignored. "
    "No percentile calculated. ",
    ("handler",),
)
HTTP_RESPONSE_SIZE = Summary(
    "http_response_size_bytes",
    "Content length of outgoing responses by handler. Only value of header is respected. Otherwise ignored. "
    "No percentile calculated. ",
    ("handler",),
)
HTTP_DURATION_HIGHR = Histogram(
    "http_request_duration_highr_seconds",
    "Latency with many buckets but no API specific labels. Made for more accurate percentile calculations. ",
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 7.5, 10, 30, 60),
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Latency with only few buckets by handler. Made to be only used if aggregation by handler is important. ",
    ("method", "handler"),
    buckets=(0.1, 0.5, 1),
)


class HttpMetrics:
    """The HTTP layer's metrics of one finished request, labelled by route template ("none" for a path that is no
    route, so labels stay bounded); /metrics itself is not counted. Labelled children are cached (a `.labels()`
    call takes a lock and builds a key)."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, str], tuple[Any, Any, Any, Any]] = {}

    def observe(
        self, scope: Scope, status: int, duration_s: float, response_headers: list[tuple[bytes, bytes]]
    ) -> None:
        handler = _handler(scope)
        if handler == METRICS_PATH:
            return
        method: str = scope["method"]
        key = (method, f"{str(status)[0]}xx", handler)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                HTTP_REQUESTS.labels(method, key[1], handler),
                HTTP_REQUEST_SIZE.labels(handler),
                HTTP_RESPONSE_SIZE.labels(handler),
                HTTP_DURATION.labels(method, handler),
            )
        total, request_size, response_size, duration = children
        total.inc()
        request_size.observe(_content_length(scope["headers"]))
        response_size.observe(_content_length(response_headers))
        HTTP_DURATION_HIGHR.observe(duration_s)
        duration.observe(duration_s)


def _handler(scope: Scope) -> str:
    """The route template of the request. FastAPI leaves the matched route in the scope (also for a 405); the
    rest (a 401 or 413 answered before routing, a 404) are matched by the instrumentator's own lookup."""
    route = scope.get("route")
    if route is not None:
        return str(route.path)
    return get_route_name(Request(scope), should_include_root_path=False) or "none"


def _content_length(headers: list[tuple[bytes, bytes]]) -> int:
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0
