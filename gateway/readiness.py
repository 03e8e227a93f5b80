"""Readiness: every dependency and every model replica checked concurrently with short timeouts, the result
reused for a second or two, and folded into healthy / degraded / unhealthy.

Policy (what a load balancer in front of the gateway should act on):
  unhealthy (503)  PostgreSQL configured and down (keys cannot be checked), or no model has a replica in
                   rotation
  degraded (200)   a model has no replica in rotation, a replica is out, Redis or Qdrant is down, or audit
                   rows are waiting in the local spool
  healthy (200)    everything answers
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .observability.health_metrics import set_dependency_up
from .upstream.pool import UpstreamPool

Status = Literal["healthy", "degraded", "unhealthy"]
Probe = Callable[[], Awaitable[Any]]


@dataclass(slots=True)
class Dependency:
    """A dependency to ping; `critical` ones make the gateway unhealthy when down."""

    name: str
    probe: Probe
    critical: bool = False


@dataclass
class Readiness:
    """Builds the /health/ready document; one instance per worker, made in the lifespan."""

    pool: UpstreamPool
    models: list[str]
    dependencies: list[Dependency] = field(default_factory=list)
    timeout_s: float = 1.0
    cache_s: float = 1.5
    # Bytes of audit rows waiting in the local spool (PostgreSQL was away); None without an audit log.
    audit_spool_bytes: Callable[[], int] | None = None
    # A model's admission gate (capacity, in flight, waiting, saturated); None without admission. Saturation is
    # reported, not a failure: a busy model is not a broken one (its status stays what its replicas say).
    admission_of: Callable[[str], dict[str, Any] | None] | None = None
    _cached: tuple[float, dict[str, Any]] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def use_models(self, models: list[str]) -> None:
        """Check these models from now on (a config reload added or removed some); the cached result is dropped."""
        self.models = models
        self._cached = None

    async def report(self) -> dict[str, Any]:
        """The readiness document (cached for `cache_s`; concurrent callers share one round of checks)."""
        async with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < self.cache_s:
                return self._status(self._cached[1])
            checks = await self._check_all()
            self._cached = (time.monotonic(), checks)
        return self._status(checks)

    async def _check_all(self) -> dict[str, Any]:
        results = await asyncio.gather(
            self.pool.prober.probe_all(), *(self._ping(dependency) for dependency in self.dependencies)
        )
        checks: dict[str, Any] = dict(results[1:])
        if self.audit_spool_bytes is not None:
            waiting = self.audit_spool_bytes()
            checks["audit"] = {
                "status": "healthy" if waiting == 0 else "degraded",
                "latency_ms": 0.0,
                "detail": "rows are written" if waiting == 0 else f"{waiting} bytes of rows wait in the local spool",
            }
        for model in self.models:
            replicas = self.pool.describe(model)
            up = [r for r in replicas if r["healthy"] and r["breaker"] != "open"]
            checks[f"model:{model}"] = {
                "status": "healthy" if len(up) == len(replicas) else ("degraded" if up else "unhealthy"),
                "latency_ms": max((r["latency_ms"] or 0.0 for r in replicas), default=0.0),
                "detail": f"{len(up)} of {len(replicas)} replicas in rotation",
                "replicas": replicas,
            }
            gate = self.admission_of(model) if self.admission_of is not None else None
            if gate is not None:
                checks[f"model:{model}"]["admission"] = gate
                if gate["saturated"]:
                    checks[f"model:{model}"]["detail"] += "; saturated: requests wait at the gateway"
        return checks

    async def _ping(self, dependency: Dependency) -> tuple[str, dict[str, Any]]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                await dependency.probe()
            status, detail = "healthy", "reachable"
        except TimeoutError:
            status, detail = "unhealthy", f"no answer within {self.timeout_s:g} s"
        except Exception as exc:  # any failure of a ping is the dependency's state, reported, not raised
            status, detail = "unhealthy", f"unreachable ({type(exc).__name__})"
        set_dependency_up(dependency.name, status == "healthy")
        latency = round((time.perf_counter() - started) * 1000, 2)
        return dependency.name, {"status": status, "latency_ms": latency, "detail": detail}

    def _status(self, checks: dict[str, Any]) -> dict[str, Any]:
        critical = {dependency.name for dependency in self.dependencies if dependency.critical}
        models_up = [name for name in self.models if checks[f"model:{name}"]["status"] != "unhealthy"]
        overall: Status = "healthy"
        if any(check["status"] != "healthy" for check in checks.values()):
            overall = "degraded"
        if not models_up or any(checks[name]["status"] == "unhealthy" for name in critical):
            overall = "unhealthy"
        return {"status": overall, "checks": checks}
