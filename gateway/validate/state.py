"""What the steps of a validation run share: its options, clients and progress, and what it has found so far."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .client import Client
from .options import Options
from .progress import Progress
from .report import Environment, ModelInfo, Target


@dataclass(slots=True)
class RunState:
    """Each step appends its targets (in the order the report shows them) and notes; discovery fills `models`."""

    options: Options
    client: Client  # the gateway's, with the key
    session: aiohttp.ClientSession  # shared with the Prometheus and Grafana clients
    progress: Progress
    raw_config: dict[str, Any] | None
    environment: Environment
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    models: list[ModelInfo] = field(default_factory=list)
    throughput_model: str | None = None
    cache_hits: int = 0
    database_queries: list[str] = field(default_factory=list)

    def info(self, name: str) -> ModelInfo:
        return next(m for m in self.models if m.name == name)
