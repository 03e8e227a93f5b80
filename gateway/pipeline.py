"""The inference request path between the route and the model server, in order: validation, rate limits
(one Redis round trip), conversation history, retrieved passages (Qdrant, when a chat asks), the response
cache, forwarding (replica choice, retries and timeouts: gateway/upstream/), and the work done after the
answer has gone out (cache store, token settlement, session append). Routes call `serve()` only."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any

from starlette.background import BackgroundTask, BackgroundTasks
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .auth import Permission, Principal
from .cache import CacheDecision, ResponseCache, cache_headers, cache_key, decide, replay_stream, tee_stream
from .conversations import Conversations, parse_session_id
from .errors import PermissionDenied
from .inference import Endpoint, InferenceService, Prepared
from .ratelimit import Decision, RateLimiter, estimate_tokens
from .redisconn import RedisPolicy
from .vectors.retrieval import Retrieval

_SSE_HEADERS = {"X-Accel-Buffering": "no"}


class Pipeline:
    """Everything an inference request goes through; Redis-backed parts are None without Redis."""

    def __init__(
        self,
        *,
        inference: InferenceService,
        conversations: Conversations,
        limiter: RateLimiter | None,
        cache: ResponseCache | None,
        policy: RedisPolicy | None,
        retrieval: Retrieval | None = None,
    ) -> None:
        self.inference = inference
        self.retrieval = retrieval
        self.conversations = conversations
        self.limiter = limiter
        self.cache = cache
        self.policy = policy

    async def serve(
        self, *, endpoint: Endpoint, request: Request, principal: Principal, session: str | None
    ) -> Response:
        """Answer one request; `session` is the X-Session-ID header, if any."""
        session_id = self._session_id(session, principal)
        body = await request.body()  # bounded by BodyLimitMiddleware (413 past CITADEL_MAX_BODY_BYTES)
        prepared = self.inference.prepare(endpoint=endpoint, body=body, principal=principal)
        # The audit middleware reads these once the response has gone out.
        state: dict[str, Any] = request.scope["state"]
        state["model"] = prepared.requested_name
        state["stream"] = prepared.stream
        usage: dict[str, Any] = state.setdefault("usage", {})

        estimate = estimate_tokens(text_chars=len(prepared.payload), max_tokens=prepared.completion_budget)
        decision = await self._check_limits(principal, prepared.requested_name, estimate, state)
        limit_headers = decision.headers() if decision is not None else {}
        after: list[Callable[[], Any]] = []
        if session_id is not None:
            # Only once the request is allowed does the database get asked for the history.
            history = await self.conversations.history(session_id=session_id, principal=principal, model=None)
            prepared = self.inference.prepare(endpoint=endpoint, body=body, principal=principal, history=history)
        retrieved = None
        if self.retrieval is not None:  # passages from a vector collection, when the chat asks (`retrieval`)
            prepared, retrieved = await self.retrieval.augment(
                prepared, body=body, principal=principal, request_id=state["request_id"]
            )

        caching = (
            CacheDecision.BYPASS if self.cache is None or session_id is not None else decide(prepared, request.headers)
        )
        key = cache_key(principal, prepared) if caching is not CacheDecision.BYPASS else ""
        if caching.read:
            state["cache_hit"] = False  # a miss unless the lookup finds it (the cache metrics count both)
            cached = await self._cached(key)
            if cached is not None:
                state["cache_hit"] = True
                hit = self._replay(cached, prepared, headers={**limit_headers, **cache_headers(hit=True)})
                if decision is not None and decision.charged_tokens:
                    # A cached answer costs the model nothing: give the charged tokens back.
                    hit.background = BackgroundTasks([_task(self._settle, principal, decision, 0)])
                return hit

        answer: dict[str, Any] | None = {} if session_id is not None else None
        response = await self.inference.forward(
            prepared, request_id=state["request_id"], usage=usage, answer=answer, trace=state
        )
        if retrieved is not None:  # before the cache stores it: a hit replays the documents used as well
            response = retrieved.annotate(response, model=prepared.requested_name)
        response.headers.update(limit_headers)
        if caching is not CacheDecision.BYPASS:
            response.headers.update(cache_headers(hit=False))
            if caching.write:
                self._store_later(response, key)
        if decision is not None and decision.charged_tokens:
            after.append(functools.partial(self._settle_used, principal, decision, usage))
        if session_id is not None and answer is not None:
            after.append(self.conversations.remember(session_id=session_id, new=prepared.new_messages, answer=answer))
        if after:
            response.background = BackgroundTasks([_task(job) for job in after])
        return response

    def _session_id(self, header: str | None, principal: Principal) -> uuid.UUID | None:
        if header is None:
            return None
        if not principal.can(Permission.SESSIONS):
            raise PermissionDenied("This key's role may not use conversation sessions.")
        return parse_session_id(header)

    async def admit(
        self, *, principal: Principal, model: str, text_chars: int, state: dict[str, Any]
    ) -> dict[str, str]:
        """The rate limits for work that is not a chat but uses a model (the vector routes embed texts): counts
        the request and its estimated tokens, raises the 429; returns the limit headers. The estimate is not
        settled afterwards (an embedding's usage is close to it)."""
        estimate = estimate_tokens(text_chars=text_chars, max_tokens=0)  # embeddings generate nothing
        decision = await self._check_limits(principal, model, estimate, state)
        return decision.headers() if decision is not None else {}

    async def admit_control(self, *, principal: Principal, state: dict[str, Any]) -> None:
        """Count one control-plane call against the caller's control limit; raises the 429 when over. Redis
        failures follow the limits' fail-open/closed policy, as for the model routes."""
        if self.limiter is None or self.policy is None:
            return
        limiter = self.limiter
        decision: Decision | None = await self.policy.call(
            "limits", lambda: limiter.check_control(principal=principal), fallback=None
        )
        if decision is not None and not decision.allowed:
            state["rate_limited"] = decision.limited_by
            raise decision.error()

    async def _check_limits(
        self, principal: Principal, model: str, estimate: int, state: dict[str, Any]
    ) -> Decision | None:
        """None when there is no limiter or Redis failed open; raises the 429 (or, failing closed, a 503)."""
        if self.limiter is None or self.policy is None:
            return None
        limiter = self.limiter
        decision: Decision | None = await self.policy.call(
            "limits",
            lambda: limiter.check(principal=principal, model=model, estimated_tokens=estimate),
            fallback=None,
        )
        if decision is not None and not decision.allowed:
            state["rate_limited"] = decision.limited_by  # which limit refused, for the metrics
            raise decision.error()
        return decision

    async def _cached(self, key: str) -> bytes | None:
        assert self.cache is not None and self.policy is not None
        cache = self.cache
        found: bytes | None = await self.policy.call("cache", lambda: cache.get(key), fallback=None)
        return found

    def _replay(self, cached: bytes, prepared: Prepared, *, headers: dict[str, str]) -> Response:
        if prepared.stream:
            return StreamingResponse(
                replay_stream(cached), media_type="text/event-stream", headers={**_SSE_HEADERS, **headers}
            )
        return Response(cached, media_type="application/json", headers=headers)

    def _store_later(self, response: Response, key: str) -> None:
        """Store the answer once it is complete, without making the client wait on Redis."""
        assert self.cache is not None and self.policy is not None
        cache, policy = self.cache, self.policy
        if isinstance(response, StreamingResponse):
            response.body_iterator = tee_stream(
                response.body_iterator,  # type: ignore[arg-type]  # our relay yields bytes only
                max_bytes=cache.max_entry_bytes,
                on_complete=lambda body: cache.put_later(key, body, policy=policy),
            )
        elif response.status_code == 200:
            cache.put_later(key, bytes(response.body), policy=policy)

    async def _settle_used(self, principal: Principal, decision: Decision, usage: dict[str, Any]) -> None:
        """Correct the up-front token charge with what the model really used (after the answer)."""
        actual = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
        if actual:  # no usage known (the request failed upstream): the charge stands
            await self._settle(principal, decision, actual)

    async def _settle(self, principal: Principal, decision: Decision, actual: int) -> None:
        assert self.limiter is not None and self.policy is not None
        limiter = self.limiter
        await self.policy.call(
            "limits",
            lambda: limiter.settle(
                principal=principal, charged=decision.charged_tokens, actual=actual, window=decision.tokens_window
            ),
            fallback=None,
        )


def _task(func: Callable[..., Any], *args: Any) -> BackgroundTask:
    return BackgroundTask(func, *args)
