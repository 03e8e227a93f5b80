"""The inference request path between the route and the model server, as named stages: the body parsed once,
then admit (rate limits, one Redis round trip), history (conversation sessions), retrieve (passages from Qdrant,
when a chat asks), lookup (the response cache), queue (a slot at the model's servers: waits its turn when they
are busy, gateway/admission/), forward (replica choice, retries and timeouts: gateway/upstream/), and after (what
runs once the answer has gone out: cache store, token settlement, session append). Routes call `serve()` only;
each stage writes what the audit row, metrics and log line need into the RequestContext."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.background import BackgroundTask, BackgroundTasks
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive

from .admission.gate import Ticket
from .admission.gates import Admission
from .admission.priority import PRIORITY_HEADER, Priority, effective_priority
from .auth import Permission, Principal
from .cache import CacheDecision, ResponseCache, cache_headers, cache_key, decide, replay_stream, tee_stream
from .context import Answer, RequestContext, Usage, context_of
from .conversations import Conversations, parse_session_id
from .errors import InvalidRequest, PermissionDenied
from .inference import Endpoint, InferenceService, Parsed, Prepared
from .observability.admission_metrics import count_alias
from .ratelimit import Decision, RateLimiter, estimate_tokens
from .ratelimit.settle import SettleQueue
from .redisconn import RedisPolicy
from .vectors.retrieval import Retrieval, Retrieved

_SSE_HEADERS = {"X-Accel-Buffering": "no"}
# Names the model that answered a request to an alias (the answer's `model` field stays the alias asked for).
MODEL_HEADER = "X-Citadel-Model"


@dataclass(slots=True)
class Job:
    """What the stages of one inference request hand each other (the request's context is what outlives them)."""

    ctx: RequestContext
    principal: Principal
    session_id: uuid.UUID | None
    priority: Priority
    parsed: Parsed = field(init=False)
    prepared: Prepared = field(init=False)
    decision: Decision | None = None  # None: no limiter, or Redis failed open
    retrieved: Retrieved | None = None
    caching: CacheDecision = CacheDecision.BYPASS
    key: str = ""  # the cache key, when the cache takes part
    ticket: Ticket | None = None  # the admission slot (None: admission off)


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
        admission: Admission | None = None,
    ) -> None:
        self.inference = inference
        self.admission = admission
        self.retrieval = retrieval
        self.conversations = conversations
        self.limiter = limiter
        self.cache = cache
        self.policy = policy
        # Token settlements are gathered and written together, not one Redis call per request.
        self.settlements = SettleQueue(limiter, policy) if limiter is not None and policy is not None else None

    async def close(self) -> None:
        """Write the token settlements still queued (at shutdown, before Redis is closed)."""
        if self.settlements is not None:
            await self.settlements.drain()

    async def serve(
        self, *, endpoint: Endpoint, request: Request, principal: Principal, session: str | None
    ) -> Response:
        """Answer one authenticated request, stage by stage; `session` is the X-Session-ID header, if any."""
        job = Job(
            ctx=context_of(request.scope),
            principal=principal,
            session_id=self._session_id(session, principal),
            priority=_priority(request.headers.get(PRIORITY_HEADER), principal),
        )
        body = await request.body()  # bounded by BodyLimitMiddleware (413 past CITADEL_MAX_BODY_BYTES)
        job.parsed = self.inference.parse(endpoint, body)
        job.prepared = self.inference.prepare(job.parsed, principal=principal, priority=job.priority)
        await self.admit(job)
        await self.history(job)
        await self.retrieve(job)
        hit = await self.lookup(job, request)
        if hit is not None:
            return hit
        await self.queue(job, request)
        try:
            response = await self.forward(job)
        except BaseException:
            if job.ticket is not None:
                job.ticket.release()
            raise
        return self.after(job, response)

    async def admit(self, job: Job) -> None:
        """The request's model and stream go into its context; the key's limits (requests, tokens) are charged."""
        prepared, ctx = job.prepared, job.ctx
        ctx.model = prepared.spec.name  # an alias's target: audit, usage and metrics record the model that served
        if prepared.alias is not None:
            count_alias(prepared.alias)
        ctx.endpoint = prepared.endpoint
        ctx.stream = prepared.stream
        ctx.priority = job.priority.value
        estimate = estimate_tokens(text_chars=len(prepared.payload), max_tokens=prepared.completion_budget)
        job.decision = await self._check_limits(job.principal, prepared.spec.name, estimate, ctx)

    async def history(self, job: Job) -> None:
        """A conversation session's stored messages before the request's own (the database is asked only for an
        allowed request)."""
        if job.session_id is None:
            return
        history = await self.conversations.history(session_id=job.session_id, principal=job.principal, model=None)
        job.prepared = self.inference.prepare(
            job.parsed, principal=job.principal, history=history, priority=job.priority, target=job.prepared.spec
        )
        job.ctx.answer = Answer()  # gathered while the answer goes out, stored afterwards

    async def retrieve(self, job: Job) -> None:
        """Passages from a vector collection in the prompt, when a chat asks (its `retrieval` field)."""
        options = getattr(job.parsed.request, "retrieval", None)
        if self.retrieval is None or options is None:
            return
        job.prepared, job.retrieved = await self.retrieval.augment(
            job.prepared, options=options, principal=job.principal, request_id=job.ctx.request_id
        )

    async def lookup(self, job: Job, request: Request) -> Response | None:
        """The cached answer, when the request may be served from the cache and one is there."""
        if self.cache is None or job.session_id is not None:
            return None
        job.caching = decide(job.prepared, request.headers)
        if job.caching is CacheDecision.BYPASS:
            return None
        job.key = cache_key(job.principal, job.prepared)
        if not job.caching.read:
            return None
        job.ctx.cache_hit = False  # a miss unless the lookup finds it (the cache metrics count both)
        cached = await self._cached(job.key)
        if cached is None:
            return None
        job.ctx.cache_hit = True
        decision = job.decision
        hit = self._replay(cached, job.prepared, headers={**self._limit_headers(job), **cache_headers(hit=True)})
        if decision is not None and decision.charged_tokens and self.settlements is not None:
            # A cached answer costs the model nothing: give the charged tokens back.
            self.settlements.add(job.principal, decision, 0)
        return hit

    async def queue(self, job: Job, request: Request) -> None:
        """A slot at the model's servers: at once when one is free, else after the request's turn in the model's
        fair line (interactive before batch); 503/429 when the line is full or the wait too long; leaves the line
        at once when the client hangs up."""
        if self.admission is None:
            return
        principal = job.principal
        job.ticket = await self.admission.enter(
            job.prepared.spec,
            key=str(principal.key_id),
            weight=principal.weight,
            priority=job.priority,
            disconnected=functools.partial(_hung_up, request.receive),
        )
        if job.ticket is not None:
            job.ctx.ticket = job.ticket
            job.ctx.queue_wait_s = job.ticket.waited_s

    async def forward(self, job: Job) -> Response:
        """The model server's answer (replica choice, retries, timeouts: gateway/upstream/); the admission slot is
        given back when the answer is over (a stream's last chunk)."""
        ctx = job.ctx
        response = await self.inference.forward(
            job.prepared, request_id=ctx.request_id, usage=ctx.usage, answer=ctx.answer, trace=ctx
        )
        ticket = job.ticket
        if ticket is not None:
            if isinstance(response, StreamingResponse):
                response.body_iterator = _releasing(response.body_iterator, ticket)
            else:
                ticket.release()
        if job.retrieved is not None:  # before the cache stores it: a hit replays the documents used as well
            response = job.retrieved.annotate(response, model=job.prepared.requested_name)
        return response

    def after(self, job: Job, response: Response) -> Response:
        """Headers, and the work done once the answer has gone out: cache store, token settlement, session append."""
        _add_headers(response, self._limit_headers(job))
        if job.caching is not CacheDecision.BYPASS:
            _add_headers(response, cache_headers(hit=False))
            if job.caching.write:
                self._store_later(response, job.key)
        after: list[Callable[[], Any]] = []
        decision = job.decision
        if decision is not None and decision.charged_tokens and self.settlements is not None:
            after.append(functools.partial(self._settle_used, self.settlements, job.principal, decision, job.ctx.usage))
        if job.session_id is not None and job.ctx.answer is not None:
            after.append(
                self.conversations.remember(
                    session_id=job.session_id, new=job.prepared.new_messages, answer=job.ctx.answer
                )
            )
        if after:
            response.background = BackgroundTasks([_task(task) for task in after])
        return response

    @staticmethod
    def _limit_headers(job: Job) -> dict[str, str]:
        """The rate-limit headers, and for a request to an alias the model that answered it."""
        headers = job.decision.headers() if job.decision is not None else {}
        if job.prepared.alias is not None:
            headers[MODEL_HEADER] = job.prepared.spec.name
        return headers

    def _session_id(self, header: str | None, principal: Principal) -> uuid.UUID | None:
        if header is None:
            return None
        if not principal.can(Permission.SESSIONS):
            raise PermissionDenied("This key's role may not use conversation sessions.")
        return parse_session_id(header)

    async def admit_embedding(self, ctx: RequestContext, *, model: str, text_chars: int) -> dict[str, str]:
        """The rate limits for work that is not a chat but uses a model (the vector routes embed texts): counts
        the request and its estimated tokens, raises the 429; returns the limit headers. The estimate is not
        settled afterwards (an embedding's usage is close to it)."""
        assert ctx.principal is not None  # the vector routes' guard has checked it
        estimate = estimate_tokens(text_chars=text_chars, max_tokens=0)  # embeddings generate nothing
        decision = await self._check_limits(ctx.principal, model, estimate, ctx)
        return decision.headers() if decision is not None else {}

    async def admit_control(self, ctx: RequestContext) -> None:
        """Count one control-plane call against the caller's control limit; raises the 429 when over. Redis
        failures follow the limits' fail-open/closed policy, as for the model routes."""
        if self.limiter is None or self.policy is None or ctx.principal is None:
            return
        limiter, principal = self.limiter, ctx.principal
        decision: Decision | None = await self.policy.call(
            "limits", lambda: limiter.check_control(principal=principal), fallback=None
        )
        if decision is not None and not decision.allowed:
            ctx.rate_limited_by = decision.limited_by
            raise decision.error()

    async def _check_limits(
        self, principal: Principal, model: str, estimate: int, ctx: RequestContext
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
            ctx.rate_limited_by = decision.limited_by  # which limit refused, for the metrics
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

    @staticmethod
    async def _settle_used(settlements: SettleQueue, principal: Principal, decision: Decision, usage: Usage) -> None:
        """Correct the up-front token charge with what the model really used (once the answer is out: a stream's
        usage comes at its end). Async, so Starlette runs it on the loop, not in a thread."""
        actual = usage.used
        if actual:  # no usage known (the request failed upstream): the charge stands
            settlements.add(principal, decision, actual)


def _add_headers(response: Response, headers: dict[str, str]) -> None:
    """Append headers the response cannot have yet (rate limits, cache status): MutableHeaders.update() scans and
    rewrites the header list once per header."""
    raw = response.raw_headers
    for name, value in headers.items():
        raw.append((name.lower().encode("latin-1"), value.encode("latin-1")))


def _priority(header: str | None, principal: Principal) -> Priority:
    """The class a request runs in: its X-Citadel-Priority header, never above its key's class."""
    try:
        return effective_priority(header, principal.priority)
    except ValueError:
        classes = ", ".join(p.value for p in Priority)
        raise InvalidRequest(
            f"The {PRIORITY_HEADER} header must be one of: {classes}.", code="invalid_priority"
        ) from None


async def _hung_up(receive: Receive) -> None:
    """Returns when the client has closed the connection (the body is read: only a disconnect can come)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _releasing(chunks: AsyncIterable[Any], ticket: Ticket) -> AsyncIterator[Any]:
    """A stream's chunks, giving the admission slot back when the stream ends (or breaks)."""
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        ticket.release()


def _task(func: Callable[..., Any], *args: Any) -> BackgroundTask:
    return BackgroundTask(func, *args)
