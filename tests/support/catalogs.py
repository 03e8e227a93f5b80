"""Models files for tests: every model points at a given backend URL (the fake upstream, or a dead port)."""

from __future__ import annotations

from pathlib import Path

import yaml

ADMIN_KEY = "test-admin-key-0123456789"


def chat_entry(backends: str, *, upstream_model: str = "", max_tokens: int = 4096) -> dict[str, object]:
    return {
        "kind": "chat",
        "display_name": "Test model",
        "weights": "none",
        "port": 1,
        "cpus": 1,
        "memory_gb": 1,
        "max_model_len": max_tokens,
        "max_tokens": max_tokens,
        "latency_target_ms": 100,
        "backends": backends,
        "upstream_model": upstream_model,
    }


def write_models_file(path: Path, models: dict[str, dict[str, object]]) -> Path:
    path.write_text(yaml.safe_dump({"models": models}))
    return path
