"""The options of a `citadel validate` run, and the error that stops one before it starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DemoMode = Literal["auto", "yes", "no"]


class UsageError(Exception):
    """The run cannot start as asked (a wrong key, an unreadable models file): exit status 2."""


@dataclass
class Options:
    url: str
    key: str
    requests: int = 20
    concurrency: int = 4
    duration_s: float = 10.0
    max_tokens: int = 16
    temperature: float = 0.7
    timeout_s: float = 120.0
    warmup: int = 1
    models: list[str] | None = None  # None: every model the key may use
    throughput_model: str | None = None  # None: the chat model with the smallest latency target
    min_rps: float | None = None
    config_path: Path | None = None
    profile: str | None = None
    profile_basis: str = ""
    demo: DemoMode = "auto"
    database_url: str | None = None
    prometheus_url: str | None = None
    grafana_url: str | None = None
    grafana_token: str | None = None
