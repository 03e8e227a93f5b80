"""Live configuration: config/models.yaml applied to a running gateway, without a restart and without dropping a
request in flight.

One operation, `Reloader.reload()`: read the models file again exactly as at start-up (`load_catalog` with the
same CITADEL_CONFIG_PATH and CITADEL_PROFILE; `${VAR}` filled from the process's environment and `.env`, read
again) and validate it whole. A file that does not load or validate is refused: the error is logged, counted
(`citadel_llm_config_reloads_total{result="invalid"}`) and returned (POST /admin/reload answers 400), and the
running configuration stays as it was. A valid one is swapped in at once (no await between the steps, so no
request sees half of it): a new immutable Catalog, the upstream pool reconciled, the per-model readers updated.

What reloads, per model entry:
  - models added: served at once (listed, routed, probed, in readiness and on the status page); a new chat
    model's `model-<name>` vector collection is made by the vector service's start-up work, which runs again on
    the next vector request;
  - models removed: new requests answer 404 model_not_found; requests in flight finish;
  - `backends`: a new replica gets a session and a fresh circuit breaker and is probed once before any request
    can reach it (a dead one starts out of rotation); a removed one takes no new request, its requests in flight
    (streams included) finish, then it is closed; unchanged ones keep their breaker, health, load figures and
    connections;
  - max_tokens, max_model_len, temperature, timeouts, upstream_model, display_name, dimensions, kind: read by the
    next request. A request in flight keeps the ModelSpec it started with (its limits, defaults and timeouts);
  - prices: counted at the prices in force when a request ends; latency targets: the status page at once
    (the alert rules in config/prometheus are Prometheus' own files).
What a reload does not do:
  - start, stop or restart model servers: weights, port, cpus, memory_gb, kv_cache_gb, tool_call_parser,
    chat_template and a profile's `servers` are read by the stack runner and Compose when they start a server (a
    reload reports them as changed; the gateway's own tool-calling checks follow tool_call_parser at once);
  - re-read any setting from the environment: every CITADEL_* variable, DATABASE_URL, REDIS_URL, QDRANT_URL,
    API_GATEWAY_PORT/WORKERS needs a restart. That includes the models file's path and profile, the default
    upstream timeouts (CITADEL_UPSTREAM_*_TIMEOUT_S: per-model `timeouts` do reload), the connection pool size,
    health probes, breakers, retries, rate limits (the per-model ones too), the cache, bounds and logging.

Triggers:
  - POST /admin/reload (admin keys): reloads the worker that answers, then, with Redis, tells the others on the
    `citadel:config:reload` channel; each validates and applies the file itself. Without Redis only the worker
    that answered reloads: with several workers, use SIGHUP.
  - SIGHUP to a worker reloads that worker; `citadel serve` with several workers passes a SIGHUP it gets on to
    every worker (gateway/reload_cli.py), instead of uvicorn's own answer to SIGHUP (replacing every worker process).
    With one worker, the `citadel serve` process is the worker. Either way: `kill -HUP <pid>`, or
    `systemctl reload` with `ExecReload=/bin/kill -HUP $MAINPID`.
A listener that (re)subscribes to the channel after losing Redis reloads once, in case it missed a message.
Every reload is logged with what changed and counted; SIGHUP reloads and POST /admin/reload write an admin audit
row (action `config.reload`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson
import redis.exceptions
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .audit.record import AuditRecord
from .audit.writer import AuditLog
from .catalog import Catalog, ConfigError, load_catalog
from .inference import InferenceService
from .observability.admission_metrics import zero_alias_series
from .observability.health_metrics import zero_series
from .observability.metrics import count_config_reload
from .observability.requests import RequestObserver
from .observability.window import StatusBoard
from .readiness import Readiness
from .redisconn import cancel_and_wait
from .settings import Settings, config_environment
from .store.db import is_connection_error
from .store.model_records import sync_models
from .upstream.replica import replica_label

if TYPE_CHECKING:
    from .vectors.service import VectorService

log = logging.getLogger(__name__)

CHANNEL = "citadel:config:reload"
ACTION = "config.reload"
_REDIS_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)


@dataclass(frozen=True)
class CatalogDiff:
    """What a new catalogue changes: model names, the fields of the models in both, and replica URLs."""

    models_added: tuple[str, ...] = ()
    models_removed: tuple[str, ...] = ()
    models_changed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    replicas_added: tuple[str, ...] = ()
    replicas_removed: tuple[str, ...] = ()
    # Aliases added, removed, or whose targets changed (config/models.yaml `aliases:`).
    aliases_changed: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        models = self.models_added or self.models_removed or self.models_changed
        return not (models or self.replicas_added or self.replicas_removed or self.aliases_changed)

    def describe(self) -> str:
        """One line for logs and audit rows; replicas by host:port (never a URL's path or credentials)."""
        if self.empty:
            return "no changes"
        parts = []
        if self.models_added:
            parts.append("models added: " + ", ".join(self.models_added))
        if self.models_removed:
            parts.append("models removed: " + ", ".join(self.models_removed))
        if self.models_changed:
            changed = (f"{name} ({', '.join(fields)})" for name, fields in self.models_changed.items())
            parts.append("models changed: " + ", ".join(changed))
        if self.aliases_changed:
            parts.append("aliases changed: " + ", ".join(self.aliases_changed))
        if self.replicas_added:
            parts.append("replicas added: " + ", ".join(map(replica_label, self.replicas_added)))
        if self.replicas_removed:
            parts.append("replicas removed: " + ", ".join(map(replica_label, self.replicas_removed)))
        return "; ".join(parts)


def diff_catalogs(old: Catalog, new: Catalog) -> CatalogDiff:
    """Compare two catalogues (a replica is its URL; a changed field is any ModelSpec field that differs)."""
    changed: dict[str, tuple[str, ...]] = {}
    for name in old.models.keys() & new.models.keys():
        before, after = old.models[name].model_dump(), new.models[name].model_dump()
        fields = tuple(key for key in after if before.get(key) != after[key])
        if fields:
            changed[name] = fields
    old_urls = _urls(old)
    new_urls = _urls(new)
    return CatalogDiff(
        models_added=tuple(name for name in new.models if name not in old.models),
        models_removed=tuple(name for name in old.models if name not in new.models),
        models_changed={name: changed[name] for name in new.models if name in changed},
        replicas_added=tuple(url for url in new_urls if url not in old_urls),
        replicas_removed=tuple(url for url in old_urls if url not in new_urls),
        aliases_changed=tuple(
            sorted(name for name in old.aliases.keys() | new.aliases.keys() if old.alias(name) != new.alias(name))
        ),
    )


def _urls(catalog: Catalog) -> dict[str, None]:
    return {url: None for spec in catalog.models.values() for url in spec.backends}


class Reloader:
    """Reloads the models file into one worker's running gateway (Services.reloader); see the module docstring."""

    def __init__(
        self,
        *,
        settings: Settings,
        inference: InferenceService,
        readiness: Readiness,
        status_board: StatusBoard,
        observer: RequestObserver,
        vectors: VectorService | None = None,
        db_sessions: async_sessionmaker[AsyncSession] | None = None,
        audit: AuditLog | None = None,
        redis: Redis | None = None,
    ) -> None:
        self.settings = settings
        self.inference = inference
        self.readiness = readiness
        self.status_board = status_board
        self.observer = observer
        self.vectors = vectors
        self.db_sessions = db_sessions
        self.audit = audit
        self.redis = redis
        # This worker's broadcasts come back to its own listener: they are recognised by this id and skipped.
        self.worker_id = uuid.uuid4().hex
        self.listener: ReloadListener | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def load(self) -> Catalog:
        """The models file as start-up reads it; raises ConfigError."""
        return load_catalog(self.settings.config_path, profile=self.settings.profile, env=config_environment())

    async def reload(self, *, trigger: str) -> CatalogDiff:
        """Validate the models file and apply it; raises ConfigError (the running configuration kept)."""
        async with self._lock:  # one reload at a time per worker
            try:
                catalog = self.load()
            except ConfigError as exc:
                count_config_reload("invalid")
                log.error("config reload (%s) refused, the running configuration is kept: %s", trigger, exc)
                raise
            pool = self.inference.pool
            diff = diff_catalogs(self.inference.catalog, catalog)
            prepared = await pool.prepare(catalog)
            # The swap: no await from here to its end, so every request sees the old or the new configuration.
            removed = pool.apply(prepared)
            self.inference.catalog = catalog
            self.readiness.use_models(list(catalog.models))
            self.status_board.catalog = catalog
            self.observer.use_catalog(catalog)
            zero_series(list(diff.models_added))
            zero_alias_series(
                {name: catalog.aliases[name].targets for name in diff.aliases_changed if name in catalog.aliases}
            )
            count_config_reload("ok")
            log.info("config reload (%s) applied: %s", trigger, diff.describe())
            for replica in removed:
                if replica.outstanding:
                    log.info("replica %s: draining %d requests in flight", replica.label, replica.outstanding)
            # After the swap: the database's record of the models, and the new chat models' collections.
            if diff.models_added or diff.models_changed:
                await self._record_models(catalog)
            if self.vectors is not None and any(catalog.models[name].kind == "chat" for name in diff.models_added):
                self.vectors.catalog_changed()
            return diff

    async def _record_models(self, catalog: Catalog) -> None:
        """Keep llm.models in step (as at start-up); the configuration is applied whatever happens here."""
        if self.db_sessions is None:
            return
        try:
            async with self.db_sessions() as session:
                await sync_models(session=session, catalog=catalog)
        except Exception as exc:
            if is_connection_error(exc):
                log.warning("config reload: could not record the models in the database (%s)", type(exc).__name__)
            else:
                log.exception("config reload: could not record the models in the database")

    async def broadcast(self) -> int | None:
        """Tell the other workers to reload (after a reload here); how many received it, None without Redis."""
        if self.redis is None:
            return None
        try:
            received = int(await self.redis.publish(CHANNEL, orjson.dumps({"origin": self.worker_id})))
        except _REDIS_ERRORS as exc:
            log.warning("could not tell the other workers to reload (%s): send them SIGHUP", type(exc).__name__)
            return None
        own = self.listener is not None and self.listener.subscribed.is_set()
        return max(received - int(own), 0)

    # --- triggers without a request: SIGHUP and the channel ------------------------------------------------

    def request_reload(self, trigger: str) -> None:
        """Reload in the background (a signal handler or the listener cannot wait for it)."""
        task = asyncio.get_running_loop().create_task(self._reload_in_background(trigger), name=f"reload-{trigger}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_in_background(self, trigger: str) -> None:
        started = time.perf_counter()
        try:
            diff = await self.reload(trigger=trigger)
            status, target = 200, diff.describe()
        except ConfigError:
            status, target = 400, "refused: the running configuration is kept"
        except Exception:
            log.exception("config reload (%s) failed; the running configuration is kept", trigger)
            return
        if trigger == "SIGHUP" and self.audit is not None:
            # The admin endpoint audits its own reloads; one SIGHUP is one row per worker, with its outcome.
            self.audit.record(
                AuditRecord(
                    kind="admin",
                    method="SIGHUP",
                    endpoint="SIGHUP",
                    status=status,
                    latency_ms=round((time.perf_counter() - started) * 1000, 2),
                    action=ACTION,
                    target=target[:128],
                )
            )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """For the app's lifespan: reload on SIGHUP, and on other workers' messages when there is Redis."""
        loop = asyncio.get_running_loop()
        hooked = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread: no signals
            loop.add_signal_handler(signal.SIGHUP, self.request_reload, "SIGHUP")
            hooked = True
        try:
            if self.redis is None:
                yield
            else:
                self.listener = ReloadListener(self.redis, worker_id=self.worker_id, reload=self.request_reload)
                async with self.listener:
                    yield
        finally:
            if hooked:
                loop.remove_signal_handler(signal.SIGHUP)
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


class ReloadListener:
    """Subscribes to CHANNEL and asks for a reload on every other worker's message, and on every subscription but
    the first (messages published while it was not subscribed are lost: it may have missed one). Reconnects with
    exponential backoff and notices a silent connection by its own PINGs, like revocation.RevocationListener."""

    def __init__(
        self,
        redis: Redis,
        *,
        worker_id: str,
        reload: Callable[[str], None],
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        ping_interval_s: float = 1.0,
    ) -> None:
        self.redis = redis
        self.worker_id = worker_id
        self.reload = reload
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.ping_interval_s = ping_interval_s
        self.silence_limit_s = 3 * ping_interval_s
        self.subscribed = asyncio.Event()
        self.subscriptions = 0
        self.received = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ReloadListener:
        self._task = asyncio.create_task(self._run(), name="citadel-reload-listener")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    def handle(self, data: object) -> None:
        """One message: reload unless this worker sent it."""
        try:
            origin = orjson.loads(data if isinstance(data, bytes | str) else b"")["origin"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignored a malformed message on %s", CHANNEL)
            return
        if origin != self.worker_id:
            self.received += 1
            self.reload("redis")

    async def _run(self) -> None:
        delay = self.backoff_initial_s
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except _REDIS_ERRORS as exc:
                if self.subscribed.is_set():
                    log.warning("config reload listener lost Redis (%s); reconnecting", type(exc).__name__)
                    delay = self.backoff_initial_s
            except Exception:  # never let the listener die for good
                log.exception("config reload listener failed; restarting it")
            self.subscribed.clear()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.backoff_max_s)

    async def _listen_once(self) -> None:
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.silence_limit_s
            while True:  # the subscription counts once Redis confirms it
                message = await pubsub.get_message(timeout=self.ping_interval_s)
                if message is not None and message.get("type") == "subscribe":
                    break
                if loop.time() > deadline:
                    raise redis.exceptions.TimeoutError("no subscription confirmation")
            self.subscriptions += 1
            self.subscribed.set()
            if self.subscriptions > 1:
                log.info("config reload listener subscribed again; reloading in case a message was missed")
                self.reload("redis-resubscribed")
            last_heard = last_ping = loop.time()
            while True:
                message = await pubsub.get_message(timeout=self.ping_interval_s / 2)
                now = loop.time()
                if message is not None:
                    last_heard = now
                    if message.get("type") == "message":
                        self.handle(message.get("data"))
                if now - last_heard > self.silence_limit_s:
                    raise redis.exceptions.TimeoutError("pub/sub connection silent")
                if now - last_ping >= self.ping_interval_s:
                    last_ping = now
                    await pubsub.ping()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(pubsub.aclose())
