"""The models file as `citadel validate` reads it: latency targets the gateway does not expose, and which models
serve the demo weights (a profile's servers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .options import Options, UsageError


def load_models_file(path: Path | None) -> dict[str, Any] | None:
    """The raw models file (latency targets, the profiles' demo servers), None without one."""
    if path is None:
        return None
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read the models file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"the models file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
        raise UsageError(f"the models file {path} has no top-level 'models' mapping")
    return raw


def demo_status(card: dict[str, Any], options: Options, raw_config: dict[str, Any] | None) -> tuple[bool | None, str]:
    """Whether a model is the demo model, and why we think so (None: cannot tell)."""
    if isinstance(card.get("demo"), bool):
        return bool(card["demo"]) or options.demo == "yes", "flag in /v1/models"
    if options.demo != "auto":
        return options.demo == "yes", f"--demo {options.demo}"
    profile = options.profile
    if profile is None:
        return None, "no demo flag in /v1/models and the deployment's profile is unknown: pass --profile or --demo"
    if not profile:
        return None, "no profile: each model runs whatever weights its server was given (pass --demo)"
    profiles = (raw_config or {}).get("profiles") or {}
    servers = (profiles.get(profile) or {}).get("servers") or {} if isinstance(profiles, dict) else {}
    if not servers:
        return None, f"profile {profile!r} ({options.profile_basis}) is not in the models file"
    for server_name, server in servers.items():
        if isinstance(server, dict) and str(card["id"]) in (server.get("serves") or []):
            weights = str(server.get("weights", ""))
            demo = weights.startswith("demo:")
            return demo, f"profile {profile} ({options.profile_basis}): server {server_name}, weights {weights}"
    return None, f"profile {profile!r} ({options.profile_basis}) has no server for it"
