"""The run's HTTP client: every exchange timed from sending to the whole body read, and the request bodies.

Nothing it sends is answered from the response cache: chat requests sample (temperature > 0, no seed), every
prompt and input ends in a nonce of its own, and every request sends `Cache-Control: no-store`.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .options import Options

CHAT_PROMPT = "In one short sentence, what is a citadel?"
EMBEDDING_INPUT = "A citadel is a fortress that stands above a city."
NO_STORE = {"Cache-Control": "no-store"}


@dataclass
class Exchange:
    """One timed HTTP exchange: status None when no answer came (connection refused, timeout)."""

    status: int | None
    ms: float
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def describe(exchange: Exchange) -> str:
    """A short reason for a failed exchange: `503 model_unavailable: ...`, `timeout after 120 s`."""
    if exchange.status is None:
        return exchange.error or "no answer"
    detail = ""
    if isinstance(exchange.body, dict) and isinstance(exchange.body.get("error"), dict):
        error = exchange.body["error"]
        detail = f" {error.get('code') or error.get('type') or ''}: {error.get('message', '')}".rstrip(": ")
    elif exchange.error:
        detail = f" {exchange.error}"
    return f"{exchange.status}{detail}"[:300]


class Client:
    """aiohttp with the timing, the key and the error handling of every call of the run."""

    def __init__(self, session: aiohttp.ClientSession, base: str, *, headers: dict[str, str], timeout_s: float):
        self.session, self.base, self.headers, self.timeout_s = session, base.rstrip("/"), headers, timeout_s

    async def call(
        self, method: str, path: str, *, body: Any = None, headers: dict[str, str] | None = None
    ) -> Exchange:
        url = path if path.startswith(("http://", "https://")) else f"{self.base}{path}"
        started = time.perf_counter()
        try:
            async with self.session.request(
                method,
                url,
                json=body,
                headers={**self.headers, **(headers or {})},
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as response:
                raw = await response.read()
                ms = (time.perf_counter() - started) * 1000
                try:
                    parsed: Any = json.loads(raw) if raw else None
                except ValueError:
                    parsed = None
                return Exchange(response.status, ms, parsed, dict(response.headers))
        except TimeoutError:
            return Exchange(None, (time.perf_counter() - started) * 1000, error=f"timeout after {self.timeout_s:g} s")
        except aiohttp.ClientError as exc:
            message = str(exc) or type(exc).__name__
            return Exchange(None, (time.perf_counter() - started) * 1000, error=f"{type(exc).__name__}: {message}")


def fresh_nonce() -> str:
    return uuid.uuid4().hex[:12]


def chat_body(model: str, options: Options, nonce: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": f"{CHAT_PROMPT} (validation {nonce})"}],
        "max_tokens": options.max_tokens,
        "temperature": options.temperature,
        "stream": False,
    }


def embedding_body(model: str, nonce: str) -> dict[str, Any]:
    return {"model": model, "input": f"{EMBEDDING_INPUT} (validation {nonce})"}


def auth_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
