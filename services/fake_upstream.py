"""A fake OpenAI-compatible upstream for fault injection and benchmarks (never a stand-in for the model).

The requested `model` picks the behaviour, so one process serves every case:
  anything else   an immediate answer (stream or not), like vLLM's compact JSON
  fail500         500 with a body full of internals the gateway must not pass on
  bad400          400 with a vLLM-style message naming the upstream model
  malformed       200 with a body that is not JSON
  slow            waits `--slow-s` seconds before answering
  cut             streams two events, then drops the connection
  nodone          streams two events, then ends without [DONE]
  endless         streams an event every 50 ms until the client goes away (counted in /_stats)
  paced           streams 20 events 100 ms apart, then [DONE] (a stream in flight for ~2 s)
  lazy            sends its headers, then waits `--slow-s` before its first event (a first-byte timeout)
  busy            takes `--busy-s` seconds, like a model server at work: /_stats counts how many ran at once
                  (`busy_max_in_flight`), the order they started in (`busy_order`: each request's last message)
                  and the `priority` each carried; its /metrics reports them as running (POST /_reset clears)
GET /_stats and GET /_last tell tests what arrived (payload and headers) and which streams were cancelled.
POST /_fault {"status": 500} makes every model answer that status until {"status": null}; {"waiting": 3,
"kv_cache_usage": 0.95} sets the load figures its vLLM-style GET /metrics reports (for the balancer's tests).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

CHAT_ANSWER = {
    "id": "chatcmpl-fake",
    "object": "chat.completion",
    "created": 0,
    "model": "",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hello from the fake"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
}


def _chunk(model: str, text: str, finish: str | None = None) -> bytes:
    event = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


@dataclass
class BusyStats:
    """What the `busy` model saw since the last reset."""

    in_flight: int = 0
    max_in_flight: int = 0
    order: list[Any] = field(default_factory=list)
    priorities: list[Any] = field(default_factory=list)


class FakeUpstream:
    def __init__(self, *, slow_s: float, busy_s: float = 0.2) -> None:
        self.slow_s = slow_s
        self.busy_s = busy_s
        self.busy = BusyStats()
        self.stats = {"requests": 0, "cancelled_streams": 0, "last_cancel_at": 0.0}
        self.fault: dict[str, float | None] = {"status": None, "waiting": 0.0, "kv_cache_usage": 0.0}
        self.last: dict[str, object] = {}
        self._cache: dict[str, bytes] = {}

    async def _busy(self, payload: dict[str, Any]) -> None:
        messages = payload.get("messages")
        busy = self.busy
        busy.order.append(messages[-1].get("content") if isinstance(messages, list) and messages else None)
        busy.priorities.append(payload.get("priority", 0))
        busy.in_flight += 1
        busy.max_in_flight = max(busy.max_in_flight, busy.in_flight)
        try:
            await asyncio.sleep(self.busy_s)
        finally:
            busy.in_flight -= 1

    async def reset(self, request: web.Request) -> web.Response:
        self.busy = BusyStats()
        return web.json_response({})

    def _cancelled(self) -> None:
        self.stats["cancelled_streams"] += 1
        self.stats["last_cancel_at"] = time.time()

    def _answer(self, model: str) -> bytes:
        # Precomputed per model name: the benchmark must measure the gateway, not this server.
        if model not in self._cache:
            self._cache[model] = orjson.dumps({**CHAT_ANSWER, "model": model})
        return self._cache[model]

    async def completions(self, request: web.Request) -> web.StreamResponse:
        self.stats["requests"] += 1
        payload = orjson.loads(await request.read())
        self.last = {"payload": payload, "headers": dict(request.headers)}
        model = str(payload.get("model", ""))
        if self.fault["status"]:
            body = {"error": {"message": "injected fault", "type": "InternalError"}}
            return web.json_response(body, status=int(self.fault["status"]))
        if model == "fail500":
            body = {"error": {"message": "Traceback: /srv/secret/engine.py line 42 OOM", "type": "InternalError"}}
            return web.json_response(body, status=500)
        if model == "bad400":
            body = {"error": {"message": "model `bad400` context is 2048 tokens", "type": "BadRequestError"}}
            return web.json_response(body, status=400)
        if model == "malformed":
            return web.Response(body=b"<html>not json", content_type="text/html")
        if model == "busy":
            await self._busy(payload)
        if model == "slow":
            try:
                await asyncio.sleep(self.slow_s)
            except asyncio.CancelledError:
                self._cancelled()
                raise
        if payload.get("stream"):
            return await self._stream(request, model)
        return web.Response(body=self._answer(model), content_type="application/json")

    async def _stream(self, request: web.Request, model: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if model in ("endless", "paced", "lazy"):
            events, gap = (20, 0.1) if model == "paced" else (100_000, 0.05)
            try:
                if model == "lazy":
                    await asyncio.sleep(self.slow_s)
                for i in range(events):
                    await response.write(_chunk(model, f"t{i} "))
                    await asyncio.sleep(gap)
            except (asyncio.CancelledError, ConnectionResetError):
                self._cancelled()
                raise
        await response.write(_chunk(model, "hello ") + _chunk(model, "world"))
        if model == "cut":
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write(_chunk(model, "", finish="stop"))
        if model != "nodone":
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def embeddings(self, request: web.Request) -> web.Response:
        self.stats["requests"] += 1
        payload = orjson.loads(await request.read())
        self.last = {"payload": payload, "headers": dict(request.headers)}
        inputs = payload["input"] if isinstance(payload["input"], list) else [payload["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [0.1] * 384} for i in range(len(inputs))]
        body = {"object": "list", "model": payload["model"], "data": data, "usage": {"prompt_tokens": 1}}
        return web.json_response(body, dumps=lambda o: orjson.dumps(o).decode())

    async def get_stats(self, request: web.Request) -> web.Response:
        busy = self.busy
        extra = {"busy_max_in_flight": busy.max_in_flight, "busy_order": busy.order, "busy_priorities": busy.priorities}
        return web.json_response({**self.stats, **extra})

    async def get_last(self, request: web.Request) -> web.Response:
        return web.json_response(self.last)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def set_fault(self, request: web.Request) -> web.Response:
        self.fault.update(orjson.loads(await request.read()))
        return web.json_response(self.fault)

    async def metrics(self, request: web.Request) -> web.Response:
        text = (
            f'vllm:num_requests_running{{engine="0",model_name="fake"}} {float(self.busy.in_flight)}\n'
            f'vllm:num_requests_waiting{{engine="0",model_name="fake"}} {self.fault["waiting"] or 0.0}\n'
            f'vllm:kv_cache_usage_perc{{engine="0",model_name="fake"}} {self.fault["kv_cache_usage"] or 0.0}\n'
        )
        return web.Response(text=text, content_type="text/plain")


def build_app(*, slow_s: float = 3.0, busy_s: float = 0.2) -> web.Application:
    fake = FakeUpstream(slow_s=slow_s, busy_s=busy_s)
    app = web.Application()
    app.add_routes(
        [
            web.post("/v1/chat/completions", fake.completions),
            web.post("/v1/completions", fake.completions),
            web.post("/v1/embeddings", fake.embeddings),
            web.get("/_stats", fake.get_stats),
            web.get("/_last", fake.get_last),
            web.get("/health", fake.health),
            web.get("/metrics", fake.metrics),
            web.post("/_fault", fake.set_fault),
            web.post("/_reset", fake.reset),
        ]
    )
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slow-s", type=float, default=3.0)
    parser.add_argument("--busy-s", type=float, default=0.2)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    # handler_cancellation: a request whose client left is cancelled at once, so tests see the gateway's cancel.
    web.run_app(
        build_app(slow_s=args.slow_s, busy_s=args.busy_s),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        handler_cancellation=True,
    )


if __name__ == "__main__":
    main()
