"""GET /metrics, correct with several worker processes, and the HTTP-layer instrumentation.

With `citadel serve --workers N` (N > 1) the parent points PROMETHEUS_MULTIPROC_DIR at a fresh folder
before any worker starts: every worker's prometheus_client then keeps its values in files there, and a
scrape, whichever worker answers it, adds up all of them (MultiProcessCollector). Counters of a worker
that died stay in the sum (they happened); its live gauges are dropped at the next scrape.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator import metrics as http_metrics
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from ..auth import Permission, public, require
from .metrics import set_audit_state

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


def refresh_audit_gauges(app: FastAPI) -> None:
    """Read this worker's audit writer into the audit gauges (at scrape time, not on every request)."""
    audit = getattr(app.state, "audit", None)
    if audit is None:
        return
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
        refresh_audit_gauges(request.app)
        return Response(generate_latest(scrape_registry()), media_type=CONTENT_TYPE_LATEST)

    return router


@functools.cache
def _http_instrumentation() -> Callable[[http_metrics.Info], None] | None:
    # Made once per process: the metric objects register in the default registry, and a second app in the
    # same process (the tests build many) must record into the same ones, not fail as a duplicate.
    return http_metrics.default()


def instrument_http(app: FastAPI) -> None:
    """prometheus-fastapi-instrumentator's defaults (http_requests_total, http_request_duration_seconds,
    ...), labelled by route template so paths stay bounded; /metrics itself is not counted."""
    instrumentator = Instrumentator(should_group_untemplated=True, excluded_handlers=[f"^{METRICS_PATH}$"])
    instrumentation = _http_instrumentation()
    if instrumentation is not None:
        instrumentator.add(instrumentation)
    instrumentator.instrument(app)
    # Same middleware, with the route lookup of fixed paths remembered (see RememberingRoutes).
    for index, entry in enumerate(app.user_middleware):
        if entry.cls is PrometheusInstrumentatorMiddleware:
            app.user_middleware[index] = Middleware(RememberingRoutes, *entry.args, **entry.kwargs)


class RememberingRoutes(PrometheusInstrumentatorMiddleware):
    """The instrumentator's middleware, remembering the handler of paths that are their own route template.

    Its lookup matches the request against every route of the app, ~28 us per request here (measured with
    timeit on the gateway's ~40 routes): more than the rest of the HTTP metrics. The paths of the hot routes
    (/v1/chat/completions, ...) have no parameters, so their answer never changes; paths with parameters are
    looked up each time, which keeps this map bounded by the number of routes.
    """

    _MAX_REMEMBERED = 256

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fixed: dict[tuple[str, str], tuple[str, bool]] = {}

    def _get_handler(self, request: Request) -> tuple[str, bool]:
        key = (request.scope.get("root_path", ""), request.scope["path"])
        found = self._fixed.get(key)
        if found is None:
            found = super()._get_handler(request)
            handler, templated = found
            if templated and handler == key[1] and len(self._fixed) < self._MAX_REMEMBERED:
                self._fixed[key] = found
        return found
