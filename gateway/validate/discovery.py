"""The run's first step: the gateway answers and takes the key; its models, their latency targets and demo status,
its version and readiness."""

from __future__ import annotations

from typing import Any

from .client import describe
from .models_file import demo_status
from .options import UsageError
from .report import ModelInfo, Target
from .state import RunState


async def discover(run: RunState) -> list[dict[str, Any]] | None:
    """The gateway answers, the key works; the models, their targets and demo status; version, readiness."""
    health = await run.client.call("GET", "/health")
    if not health.ok:
        run.targets.append(
            Target(
                id="gateway.reachable",
                area="gateway",
                title="gateway answers /health",
                status="fail",
                reason=f"GET /health: {describe(health)}; nothing else could be measured",
                requirement="200",
            )
        )
        return None
    listing = await run.client.call("GET", "/v1/models")
    if listing.status in (401, 403):
        raise UsageError(f"the gateway refused the key on GET /v1/models ({describe(listing)}); pass --key")
    if not listing.ok or not isinstance(listing.body, dict):
        run.targets.append(
            Target(
                id="gateway.reachable",
                area="gateway",
                title="gateway answers /health and /v1/models",
                status="fail",
                reason=f"GET /v1/models: {describe(listing)}",
            )
        )
        return None
    # Models only: an alias's card (`alias_of`) stands for models that are checked under their own names.
    cards = [c for c in listing.body.get("data", []) if isinstance(c, dict) and "id" in c and "alias_of" not in c]
    if run.options.models:
        unknown = sorted(set(run.options.models) - {c["id"] for c in cards})
        if unknown:
            raise UsageError(f"--models names models this key cannot see on the gateway: {', '.join(unknown)}")
        cards = [c for c in cards if c["id"] in run.options.models]
    run.targets.append(
        Target(
            id="gateway.reachable",
            area="gateway",
            title="gateway answers /health and /v1/models",
            status="pass",
            reason=f"/health in {health.ms:.1f} ms; /v1/models lists {len(cards)} model(s) for this key",
            measured=f"{health.ms:.1f} ms",
            requirement="200",
            value=round(health.ms, 2),
            unit="ms",
        )
    )
    await _describe_gateway(run)
    targets_from_gateway = await _status_targets(run)
    run.models = [_model_info(run, card, targets_from_gateway) for card in cards]
    return cards


async def _describe_gateway(run: RunState) -> None:
    schema = await run.client.call("GET", "/openapi.json")
    version = schema.body.get("info", {}).get("version") if schema.ok and isinstance(schema.body, dict) else None
    if version:
        run.environment.gateway_version, run.environment.gateway_version_source = str(version), "/openapi.json"
    else:
        run.environment.gateway_version_source = f"not exposed (/openapi.json: {describe(schema)})"
    ready = await run.client.call("GET", "/health/ready")
    if isinstance(ready.body, dict) and isinstance(ready.body.get("checks"), dict):
        states = {"overall": str(ready.body.get("status"))}
        for name, check in ready.body["checks"].items():
            if isinstance(check, dict):
                states[name] = str(check.get("status"))
        run.environment.readiness = states


async def _status_targets(run: RunState) -> dict[str, float]:
    """Each model's latency_target_ms as the gateway itself has it (its status page data), if it answers."""
    status = await run.client.call("GET", "/status/data")
    if not status.ok or not isinstance(status.body, dict):
        return {}
    return {
        str(row["model"]): float(row["latency_target_ms"])
        for row in status.body.get("models", [])
        if isinstance(row, dict) and isinstance(row.get("latency_target_ms"), int | float) and "model" in row
    }


def _model_info(run: RunState, card: dict[str, Any], targets: dict[str, float]) -> ModelInfo:
    name = str(card["id"])
    target: float | None = targets.get(name)
    source = "/status/data"
    if target is None:
        entry = ((run.raw_config or {}).get("models") or {}).get(name) or {}
        configured = entry.get("latency_target_ms") if isinstance(entry, dict) else None
        target = float(configured) if isinstance(configured, int | float) else None
        source = f"{run.options.config_path}" if target is not None else "none"
    demo, basis = demo_status(card, run.options, run.raw_config)
    return ModelInfo(
        name=name,
        kind=str(card.get("kind", "chat")),
        display_name=card.get("display_name"),
        demo=demo,
        demo_basis=basis,
        latency_target_ms=target,
        target_source=source,
    )


def pick_throughput_model(run: RunState, chat: list[dict[str, Any]]) -> str | None:
    names = [str(c["id"]) for c in chat]
    if run.options.throughput_model:
        if run.options.throughput_model not in names:
            raise UsageError(f"--throughput-model {run.options.throughput_model} is not a chat model listed")
        return run.options.throughput_model
    if not names:
        return None
    targets = {m.name: m.latency_target_ms for m in run.models}
    return min(names, key=lambda n: (targets.get(n) is None, targets.get(n) or 0, names.index(n)))
