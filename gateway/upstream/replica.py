"""One backend replica (a vLLM server): its pooled HTTP session, health, circuit breaker and load figures."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

from ..observability.health_metrics import set_replica_state
from .breaker import BreakerState, CircuitBreaker


def replica_label(url: str) -> str:
    """host:port of a replica's URL: what metrics, logs and reload summaries call it (no path or credentials)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


@dataclass(slots=True)
class LoadReport:
    """vLLM's own load figures from its /metrics, as of `at` (monotonic seconds)."""

    waiting: float = 0.0
    running: float = 0.0
    kv_cache_usage: float = 0.0
    at: float = 0.0
    ours: int = 0  # requests this worker had in flight to the replica when the figures were read


@dataclass(eq=False)
class Replica:
    """A model server at one base URL; shared by every model that server serves."""

    url: str
    models: list[str]
    breaker: CircuitBreaker
    session: aiohttp.ClientSession | None = None
    # False while its health probe fails or a connection to it was refused; true again when a probe answers.
    healthy: bool = True
    # Requests from this worker sent to it and not finished (streams count until their last byte).
    outstanding: int = 0
    load: LoadReport = field(default_factory=LoadReport)
    last_probe_error: str | None = None
    last_probe_ms: float | None = None
    # Health probes in a row that timed out while no request to it succeeded either (the prober's evidence of a
    # hung server), and the breaker's success count at the last probe.
    silent_probes: int = 0
    successes_at_probe: int = 0

    @property
    def label(self) -> str:
        """host:port: what metrics and logs call it (bounded, and no path or credentials)."""
        return replica_label(self.url)

    @property
    def in_rotation(self) -> bool:
        """Healthy and not shut off by its breaker (a half-open breaker lets one trial through)."""
        return self.healthy and self.breaker.allow()

    def mark(self, *, healthy: bool, error: str | None = None) -> None:
        changed = healthy != self.healthy
        self.healthy = healthy
        self.last_probe_error = error
        if changed:
            self.publish()

    def publish(self) -> None:
        """Export rotation and breaker state for every model this replica serves."""
        state = self.breaker.state
        for model in self.models:
            set_replica_state(
                model, self.label, up=self.healthy and state is not BreakerState.OPEN, breaker=state.value
            )

    def load_is_fresh(self, *, max_age_s: float) -> bool:
        return self.load.at > 0 and time.monotonic() - self.load.at <= max_age_s
