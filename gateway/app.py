"""create_app(): settings, catalogue, long-lived clients in the lifespan, middleware, routes, error handlers."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.routing import Route

from . import __version__
from .admission.gates import Admission
from .api import admin, batches, feedback, files, health, openai, reload, sessions, usage, vectors
from .api.openapi_schema import install_openapi
from .api.status import STATUS_DATA_PATH, STATUS_PATH, status_router
from .audit.writer import AuditLog
from .auth import PERMISSION_ATTR, KeyStore
from .batch.runner import BatchRunner
from .cache import ResponseCache
from .catalog import Catalog, load_catalog
from .conversations import Conversations
from .errors import install_error_handlers
from .housekeeping import housekeeping
from .inference import InferenceService
from .keystore import BootstrapKeyStore, CachedKeyStore
from .middleware import AuthenticationMiddleware, BodyLimitMiddleware, RequestLayer
from .observability.admission_metrics import zero_alias_series
from .observability.exposition import METRICS_PATH, HttpMetrics, metrics_router, refresh_audit_gauges
from .observability.health_metrics import count_redis_failure, zero_series
from .observability.requests import RequestObserver
from .observability.window import StatusBoard
from .pipeline import Pipeline
from .ratelimit import LimitConfig, RateLimiter
from .readiness import Dependency, Readiness
from .redisconn import RedisPolicy, create_redis
from .reload import Reloader
from .revocation import RevocationListener
from .services import Services
from .settings import Settings, config_environment
from .store.db import asyncpg_dsn, create_engine, create_sessionmaker, is_connection_error
from .store.model_records import sync_models
from .upstream.pool import UpstreamPool
from .vectors.retrieval import Retrieval
from .vectors.service import VectorService

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/health", "/health/ready"})
# Scrapes and status polling are not API use: no audit rows, no request metrics.
UNAUDITED_PATHS = frozenset({"/health", "/health/ready", METRICS_PATH, STATUS_PATH, STATUS_DATA_PATH})
ROUTERS = (
    health.router,
    openai.router,
    usage.router,
    sessions.router,
    admin.router,
    reload.router,
    vectors.router,
    feedback.router,
    files.router,
    batches.router,
)


def create_app(settings: Settings | None = None, catalog: Catalog | None = None) -> FastAPI:
    """Build the gateway; fails fast on missing secrets or a bad models file."""
    settings = settings or Settings()  # type: ignore[call-arg]
    catalog = catalog or load_catalog(settings.config_path, profile=settings.profile, env=config_environment())
    status_board = StatusBoard(catalog)
    observer = RequestObserver(catalog, log_payloads=settings.log_payloads)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = UpstreamPool(catalog, settings)
        await pool.start()
        database_url = settings.database_url.get_secret_value() if settings.database_url else None
        engine = create_engine(database_url) if database_url else None
        db_sessions = create_sessionmaker(engine) if engine else None
        bootstrap = BootstrapKeyStore(settings.admin_key.get_secret_value())
        key_store: KeyStore = bootstrap
        if db_sessions is not None:
            key_store = CachedKeyStore(bootstrap=bootstrap, sessions=db_sessions, ttl_s=settings.key_cache_ttl_s)
            await _record_models(db_sessions, catalog)
        else:
            log.warning("no DATABASE_URL: only the bootstrap admin key works; audit rows stay in the local spool")
        audit = AuditLog(
            dsn=asyncpg_dsn(database_url) if database_url else None,
            spool_dir=settings.audit.spool_dir,
            batch_size=settings.audit.batch_size,
            flush_interval_s=settings.audit.flush_interval_s,
            spool_max_bytes=settings.audit.spool_max_mb * 2**20,
        )
        await audit.start()
        redis = create_redis(settings.redis_url, timeout_ms=settings.redis.timeout_ms) if settings.redis_url else None
        policy = RedisPolicy.from_settings(settings, on_event=count_redis_failure) if redis is not None else None
        cache = None
        if redis is not None and settings.cache.enabled:
            cache = ResponseCache(redis, ttl_s=settings.cache.ttl_s, max_entry_bytes=settings.cache.max_entry_bytes)
        limit_config = LimitConfig.from_settings(settings.rate_limit)
        limit_config.validate()
        # The queue in front of each model's servers (capacity per replica, fair across keys, priority classes).
        admission = Admission(settings=settings.admission, workers=settings.workers, pool=pool)
        inference = InferenceService(settings=settings, catalog=catalog, pool=pool, admission=admission)
        conversations = Conversations(db_sessions)
        # Qdrant: a server at QDRANT_URL or the embedded store; an unreachable one only fails vector requests.
        vectors = VectorService.start(settings=settings, inference=inference)
        pipeline = Pipeline(
            inference=inference,
            conversations=conversations,
            limiter=RateLimiter(redis, limit_config) if redis is not None else None,
            cache=cache,
            policy=policy,
            retrieval=Retrieval(vectors),
            admission=admission,
        )
        readiness = _readiness(
            settings, catalog, pool, db_sessions=db_sessions, redis=redis, vectors=vectors, audit=audit
        )
        readiness.admission_of = lambda name: _gate_state(admission, inference, name)
        services = Services(
            settings=settings,
            inference=inference,
            pool=pool,
            engine=engine,
            db_sessions=db_sessions,
            key_store=key_store,
            audit=audit,
            conversations=conversations,
            redis=redis,
            redis_policy=policy,
            cache=cache,
            vectors=vectors,
            pipeline=pipeline,
            observer=observer,
            status_board=status_board,
            readiness=readiness,
            # config/models.yaml again on POST /admin/reload, SIGHUP or another worker's word (gateway/reload.py).
            reloader=Reloader(
                settings=settings,
                inference=inference,
                readiness=readiness,
                status_board=status_board,
                observer=observer,
                vectors=vectors,
                db_sessions=db_sessions,
                audit=audit,
                redis=redis,
            ),
        )
        app.state.services = services
        if redis is None:
            log.warning("no REDIS_URL: no rate limits, no response cache, revocations reach only this worker")
        zero_series(list(catalog.models))
        zero_alias_series({name: alias.targets for name, alias in catalog.aliases.items()})
        _tune_gc()
        try:
            async with contextlib.AsyncExitStack() as background:
                if redis is not None:
                    # Revocations made on any worker reach this one at once (not after the key cache TTL).
                    await background.enter_async_context(
                        RevocationListener(redis, forget=key_store.forget, forget_all=key_store.forget_all)
                    )
                # Replicas are probed in the background: out of rotation when they fail, back when they answer.
                await background.enter_async_context(pool.prober.running())
                # Snapshots of every worker's metrics for the status page (and this worker's audit gauges).
                await background.enter_async_context(
                    status_board.running(before=lambda: _refresh_gauges(audit, admission, inference))
                )
                await background.enter_async_context(services.reloader.running())
                await background.enter_async_context(
                    housekeeping(
                        catalog=lambda: inference.catalog,
                        db_sessions=db_sessions,
                        audit_dsn=asyncpg_dsn(database_url) if database_url else None,
                        retention_days=settings.audit.retention_days,
                    )
                )
                if settings.batch.enabled and database_url:
                    # One runner leads across every worker and replica (a PostgreSQL advisory lock); stopped first
                    # at shutdown: lines in flight stay pending and the next leader sends them again.
                    runner = BatchRunner(
                        services=services, app=app, dsn=asyncpg_dsn(database_url), settings=settings.batch
                    )
                    await background.enter_async_context(runner.running())
                yield
        finally:
            # Requests have drained (uvicorn waits for them); everything audited so far is flushed or spooled.
            await audit.close()
            if cache is not None:
                await cache.drain()
            await pipeline.close()  # the token settlements still queued
            if redis is not None:
                await redis.aclose()
            await vectors.close()
            await pool.close()
            if engine is not None:
                await engine.dispose()

    # No trailing-slash redirects: Starlette builds their Location from the request's own Host header, which would
    # send a client wherever that header pointed. `/v1/models/` is an unknown route (404), like any other.
    app = FastAPI(
        title="Citadel LLM Server",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )
    observability = (
        metrics_router(public_access=settings.metrics_public),
        status_router(public_data=settings.status_page_public),
    )
    for router in (*ROUTERS, *observability):
        assert_every_route_guarded(router)
        app.include_router(router)
    # The inference routes as plain Starlette routes, ahead of the routers: the hot path skips FastAPI's routing
    # and dependency solving; the FastAPI routes of the same paths still document them in the OpenAPI schema.
    fast_routes = openai.inference_routes()
    assert_every_route_guarded(fast_routes)
    app.router.routes[0:0] = fast_routes
    install_error_handlers(app)
    # The status page's HTML holds no data; /metrics and the page's data are public only when a setting says so.
    public_paths = PUBLIC_PATHS | {STATUS_PATH}
    public_paths |= {METRICS_PATH} if settings.metrics_public else set()
    public_paths |= {STATUS_DATA_PATH} if settings.status_page_public else set()
    install_openapi(app, public_paths=public_paths)
    # The last added is the outermost: the request layer (context, id, audit row, metrics, log line: it sees every
    # answer, 401s included), then auth, then the body bound (after auth: nothing of a keyless body is read).
    # An upload's bound is the batch file limit (plus its form's framing), not the JSON bodies' limit.
    upload_bytes = settings.batch.max_file_bytes + files.MULTIPART_OVERHEAD_BYTES
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, overrides={files.PATH: upload_bytes})
    app.add_middleware(AuthenticationMiddleware, public_paths=frozenset(public_paths))
    app.add_middleware(RequestLayer, unaudited=UNAUDITED_PATHS, observer=observer, http=HttpMetrics())
    return app


def _refresh_gauges(audit: AuditLog, admission: Admission, inference: InferenceService) -> None:
    """Gauges that change without requests: this worker's audit queue and spool, each model's admission capacity."""
    refresh_audit_gauges(audit)
    admission.publish(inference.catalog)


def _gate_state(admission: Admission, inference: InferenceService, model: str) -> dict[str, Any] | None:
    """A model's admission gate for readiness (the catalogue in force: a reload may have changed it)."""
    spec = inference.catalog.get(model)
    if spec is None or not admission.settings.enabled:
        return None
    return admission.describe(spec)


def _readiness(
    settings: Settings,
    catalog: Catalog,
    pool: UpstreamPool,
    *,
    db_sessions: async_sessionmaker[AsyncSession] | None,
    redis: Redis | None,
    vectors: VectorService,
    audit: AuditLog,
) -> Readiness:
    """What /health/ready checks: PostgreSQL (critical), Redis, Qdrant, the audit spool, every replica."""
    dependencies = []
    if db_sessions is not None:
        sessions = db_sessions

        async def ping_postgres() -> None:
            async with sessions() as session:
                await session.execute(text("SELECT 1"))

        dependencies.append(Dependency("postgres", ping_postgres, critical=True))
    if redis is not None:
        dependencies.append(Dependency("redis", redis.ping))
    dependencies.append(Dependency("qdrant", vectors.ping))
    return Readiness(
        pool=pool,
        models=list(catalog.models),
        dependencies=dependencies,
        timeout_s=settings.health.timeout_s,
        cache_s=settings.readiness_cache_s,
        audit_spool_bytes=lambda: audit.spool_bytes,
    )


def _tune_gc() -> None:
    """Move the start-up heap (~100k objects: SQLAlchemy, FastAPI, pydantic) out of the collector's way.

    Measured with bench/overhead.py: full collections of that heap took ~90 ms each, every 0.5 s under
    load, and were the gateway's p99. Frozen, a collection takes ~2.5 ms; a higher gen-0 threshold
    (requests allocate but make no cycles) cut CPU per request by another 15-25%.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


async def _record_models(db_sessions: async_sessionmaker[AsyncSession], catalog: Catalog) -> None:
    """Keep llm.models in step with the catalogue; a database that is down must not stop the gateway."""
    try:
        async with db_sessions() as session:
            await sync_models(session=session, catalog=catalog)
    except Exception as exc:
        if not is_connection_error(exc):
            raise
        log.warning("could not record the models in the database (%s); continuing", type(exc).__name__)


def _permissions(dependant: Dependant) -> list[str]:
    found = []
    for sub in dependant.dependencies:
        if sub.call is not None and hasattr(sub.call, PERMISSION_ATTR):
            found.append(getattr(sub.call, PERMISSION_ATTR))
        found.extend(_permissions(sub))
    return found


def assert_every_route_guarded(router: APIRouter | Sequence[Route]) -> None:
    """Deny by default: refuse to build an app with an API route that declares no permission (a FastAPI route
    through its dependencies, a plain Starlette route through its endpoint's declared permission)."""
    for route in router.routes if isinstance(router, APIRouter) else router:
        if isinstance(route, APIRoute):
            if not _permissions(route.dependant):
                raise RuntimeError(f"route {route.path} declares no permission (use require(...) or public)")
        elif isinstance(route, Route) and not hasattr(route.endpoint, PERMISSION_ATTR):
            raise RuntimeError(f"route {route.path} declares no permission (set {PERMISSION_ATTR} on its endpoint)")
