"""What one finished API request leaves behind besides its audit row: its metrics and its log line.

Called once per request by the request layer (gateway/middleware.py), after the response has gone out, with the
request's RequestContext. Labelled children are
cached (a `.labels()` lookup takes a lock and builds a key each time) to keep this off the gateway's
overhead budget.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from ..catalog import Catalog
from ..context import RequestContext
from . import metrics as m
from .logs import FIELDS_ATTR, REQUEST_LOGGER

log = logging.getLogger(REQUEST_LOGGER)

# With payload logging on, each of the request and answer is logged up to this many bytes.
MAX_PAYLOAD_LOG_BYTES = 16_384


class PayloadCapture:
    """The request body and answer bytes of one request (only when CITADEL_LOG_PAYLOADS=true)."""

    def __init__(self) -> None:
        self.request = bytearray()
        self.answer = bytearray()

    def wrap(self, receive: Receive, send: Send) -> tuple[Receive, Send]:
        async def receive_captured() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                _append(self.request, message.get("body", b""))
            return message

        async def send_captured(message: Message) -> None:
            if message["type"] == "http.response.body":
                _append(self.answer, message.get("body", b""))
            await send(message)

        return receive_captured, send_captured

    def fields(self) -> dict[str, str]:
        return {
            "request_body": self.request.decode("utf-8", "replace"),
            "response_body": self.answer.decode("utf-8", "replace"),
        }


def _append(buffer: bytearray, chunk: bytes) -> None:
    room = MAX_PAYLOAD_LOG_BYTES - len(buffer)
    if room > 0 and chunk:
        buffer += chunk[:room]


class RequestObserver:
    """Per-request metrics and the one structured log line; model labels limited to the catalogue's names."""

    def __init__(self, catalog: Catalog, *, log_payloads: bool = False) -> None:
        self.models: frozenset[str] = frozenset()
        self.prices: dict[str, tuple[float, float]] = {}
        self.use_catalog(catalog)
        self.log_payloads = log_payloads
        self._requests: dict[tuple[str, str, int], Any] = {}
        self._durations: dict[tuple[str, str], Any] = {}
        # The per-model children of the other metrics, made on first use (an unused series stays absent).
        self._by_model: dict[tuple[Any, str, str], Any] = {}

    def use_catalog(self, catalog: Catalog) -> None:
        """Take the catalogue's prices (a config reload); a removed model keeps its label and its last prices for
        its requests still in flight (labels stay bounded: only names the models file ever had)."""
        self.models = self.models | frozenset(catalog.models)
        self.prices = {
            **self.prices,
            **{
                name: (spec.price_per_1k_prompt_tokens / 1000, spec.price_per_1k_completion_tokens / 1000)
                for name, spec in catalog.models.items()
            },
        }

    def capture(self) -> PayloadCapture | None:
        return PayloadCapture() if self.log_payloads else None

    def model_label(self, model: object) -> str:
        if model is None:
            return "none"
        return model if model in self.models else "other"  # type: ignore[return-value]

    def observe(
        self, scope: Scope, ctx: RequestContext, *, latency_s: float, capture: PayloadCapture | None = None
    ) -> None:
        status = ctx.status
        route_path: str | None = getattr(scope.get("route"), "path", None)
        endpoint = m.endpoint_label(route_path)
        model = self.model_label(ctx.model)
        key = (model, endpoint, status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = m.REQUESTS.labels(model=model, endpoint=endpoint, status=str(status))
        counter.inc()
        histogram = self._durations.get(key[:2])
        if histogram is None:
            histogram = self._durations[key[:2]] = m.REQUEST_DURATION.labels(model=model, endpoint=endpoint)
        histogram.observe(latency_s)
        ttft_s = ctx.ttft_s()
        if ttft_s is not None:
            self._child(m.TIME_TO_FIRST_TOKEN, model).observe(ttft_s)
        prompt = ctx.usage.prompt_tokens or 0
        completion = ctx.usage.completion_tokens or 0
        cache_hit = ctx.cache_hit
        if prompt or completion:
            self._count_tokens(model, prompt, completion, cached=bool(cache_hit))
            if status == 200 and completion and not cache_hit and latency_s > 0:
                self._child(m.TOKENS_PER_SECOND, model).observe(completion / latency_s)
        if cache_hit is not None:  # set by the pipeline only for requests the cache was asked about
            self._child(m.CACHE_REQUESTS, model, "hit" if cache_hit else "miss").inc()
        if ctx.rate_limited_by is not None and status == 429:
            m.count_rate_limited(model, ctx.rate_limited_by)
        if log.isEnabledFor(logging.INFO):
            self._log(scope, ctx, route_path, latency_s, ttft_s, model, prompt, completion, capture)

    def _count_tokens(self, model: str, prompt: int, completion: int, *, cached: bool) -> None:
        if prompt:
            self._child(m.PROMPT_TOKENS, model).inc(prompt)
        if completion:
            self._child(m.COMPLETION_TOKENS, model).inc(completion)
        price_prompt, price_completion = self.prices.get(model, (0.0, 0.0))
        cost = prompt * price_prompt + completion * price_completion
        if cost and not cached:  # a cached answer cost no model time
            self._child(m.COST, model).inc(cost)

    def _child(self, metric: Any, model: str, other: str = "") -> Any:
        """`metric.labels(model[, other])`, remembered: labels() takes a lock and builds its key on every call."""
        key = (metric, model, other)
        child = self._by_model.get(key)
        if child is None:
            child = self._by_model[key] = metric.labels(model, other) if other else metric.labels(model)
        return child

    def _log(
        self,
        scope: Scope,
        ctx: RequestContext,
        route_path: str | None,
        latency_s: float,
        ttft_s: float | None,
        model: str,
        prompt: int,
        completion: int,
        capture: PayloadCapture | None,
    ) -> None:
        principal = ctx.principal
        fields: dict[str, Any] = {
            "method": scope["method"],
            "path": route_path or scope["path"][:128],
            "status": ctx.status,
            "latency_ms": round(latency_s * 1000, 2),
            "key": principal.name if principal is not None else None,  # the key's name, never the secret
            "model": model if model != "none" else None,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cache_hit": bool(ctx.cache_hit),
            "retries": ctx.retries,
        }
        if ttft_s is not None:
            fields["ttft_ms"] = round(ttft_s * 1000, 2)
        if ctx.error_type:
            fields["error_type"] = ctx.error_type
        if ctx.priority is not None:
            fields["priority"] = ctx.priority
        if ctx.queue_wait_s:  # it waited at the gateway for a model server slot
            fields["queue_wait_ms"] = round(ctx.queue_wait_s * 1000, 2)
        if capture is not None:
            fields.update(capture.fields())
        log.info("request", extra={FIELDS_ATTR: fields})
