"""`citadel doctor --url`: a running gateway, from wherever the operator is: /health, /health/ready (each
dependency and replica as the gateway sees them), /v1/models with a key."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp

from .common import POSTGRES_DOWN_FIX, REDIS_DOWN_FIX, http_reason, start_fix
from .findings import Finding, Status, elapsed_ms, fail, ok, warn

GATEWAY_DOWN_FIX = (
    "start the gateway (`make run`, `docker compose up -d gateway`, `systemctl start citadel-gateway`) or correct "
    "the URL; its log says why it stopped (`docker compose logs gateway`, `journalctl -u citadel-gateway`)"
)
_STATUS: dict[str, Status] = {"healthy": "ok", "degraded": "warn", "unhealthy": "fail"}


async def url_findings(url: str, *, key: str | None, timeout_s: float) -> list[Finding]:
    base = url.rstrip("/")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        started = time.perf_counter()
        try:
            async with session.get(f"{base}/health") as answer:
                status = answer.status
                body = await answer.json(content_type=None) if status == 200 else None
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return [fail("gateway", f"{base}: {http_reason(exc, timeout_s)}", GATEWAY_DOWN_FIX)]
        latency = elapsed_ms(started)
        if status != 200 or not isinstance(body, dict) or body.get("service") != "gateway":
            return [
                fail(
                    "gateway",
                    f"{base}/health answered HTTP {status}, not as a Citadel gateway",
                    "give the gateway's base URL (http://host:8000), not a model server's or a proxy's error page",
                    latency_ms=latency,
                )
            ]
        findings = [ok("gateway", f"{base}/health answered in {latency:g} ms", latency_ms=latency)]
        findings += await _readiness(session, base, timeout_s)
        findings.append(await _models(session, base, key, timeout_s))
    return findings


async def _readiness(session: aiohttp.ClientSession, base: str, timeout_s: float) -> list[Finding]:
    started = time.perf_counter()
    try:
        async with session.get(f"{base}/health/ready") as answer:
            status = answer.status
            body = await answer.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return [fail("readiness", f"{base}/health/ready: {http_reason(exc, timeout_s)}", GATEWAY_DOWN_FIX)]
    latency = elapsed_ms(started)
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict) or not isinstance(document.get("checks"), dict):
        return [
            fail("readiness", f"/health/ready answered HTTP {status} without a readiness document", GATEWAY_DOWN_FIX)
        ]
    overall = str(document.get("status"))
    findings = [
        Finding(
            "readiness",
            _STATUS.get(overall, "fail"),
            f"{overall} (HTTP {status}), answered in {latency:g} ms",
            "" if overall == "healthy" else "see the findings below",
            latency,
        )
    ]
    for name, check in document["checks"].items():
        findings.append(readiness_finding(name, check))
    return findings


def readiness_finding(name: str, check: dict[str, Any]) -> Finding:
    """One entry of /health/ready as a finding, with the fix for that kind of dependency."""
    status = _STATUS.get(str(check.get("status")), "fail")
    detail = str(check.get("detail", ""))
    if name.startswith("model:"):
        replicas = [_replica(replica) for replica in check.get("replicas", [])]
        detail = f"{detail}: {'; '.join(replicas)}" if replicas else detail
    latency = check.get("latency_ms")
    latency_ms = float(latency) if isinstance(latency, int | float) else None
    check_name = f"ready {name.replace('model:', 'model ')}"
    if status == "ok":
        return ok(check_name, detail, latency_ms=latency_ms)
    return Finding(check_name, status, detail, _fix(name), latency_ms)


def _replica(replica: dict[str, Any]) -> str:
    state = "up" if replica.get("healthy") else f"down ({replica.get('error') or 'no answer'})"
    return f"replica {replica.get('replica')} {state}, breaker {replica.get('breaker')}"


def _fix(name: str) -> str:
    if name == "postgres":
        return f"{POSTGRES_DOWN_FIX}, as the gateway's host reaches it (`citadel doctor` there says more)"
    if name == "redis":
        return REDIS_DOWN_FIX
    if name == "qdrant":
        return (
            "start Qdrant (`docker compose up -d qdrant`) or correct QDRANT_URL; `citadel doctor` on the gateway's host"
        )
    if name == "audit":
        return (
            "audit rows wait in the gateway's spool because PostgreSQL was away (or is not configured): they are "
            "written when it is reachable; see the postgres entry"
        )
    if name.startswith("model:"):
        return start_fix(name.removeprefix("model:"))
    return "see the gateway's log"


async def _models(session: aiohttp.ClientSession, base: str, key: str | None, timeout_s: float) -> Finding:
    if not key:
        return warn(
            "models api",
            "no key given: GET /v1/models not checked",
            "pass --key, or set CITADEL_ADMIN_KEY (environment or .env)",
        )
    started = time.perf_counter()
    try:
        async with session.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"}) as answer:
            status = answer.status
            body = await answer.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        return fail("models api", f"GET /v1/models: {http_reason(exc, timeout_s)}", GATEWAY_DOWN_FIX)
    latency = elapsed_ms(started)
    if status == 401:
        return fail(
            "models api",
            "GET /v1/models: the key was refused (HTTP 401)",
            "pass a valid key with --key (or CITADEL_ADMIN_KEY)",
            latency_ms=latency,
        )
    if status != 200 or not isinstance(body, dict):
        return fail("models api", f"GET /v1/models answered HTTP {status}", "see the gateway's log", latency_ms=latency)
    names = [str(item.get("id")) for item in body.get("data", []) if isinstance(item, dict)]
    return ok("models api", f"lists {len(names)} models: {', '.join(names)}", latency_ms=latency)
