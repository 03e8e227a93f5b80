"""Services: the gateway's long-lived objects, built once in the lifespan and kept as the one `app.state.services`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.types import Scope

if TYPE_CHECKING:  # the modules below import the routes' dependencies, which import this one
    from redis.asyncio import Redis
    from starlette.applications import Starlette

    from .audit.writer import AuditLog
    from .auth import KeyStore
    from .cache import ResponseCache
    from .catalog import Catalog
    from .conversations import Conversations
    from .inference import InferenceService
    from .observability.requests import RequestObserver
    from .observability.window import StatusBoard
    from .pipeline import Pipeline
    from .readiness import Readiness
    from .redisconn import RedisPolicy
    from .reload import Reloader
    from .settings import Settings
    from .upstream.pool import UpstreamPool
    from .vectors.service import VectorService


@dataclass(slots=True)
class Services:
    """Everything a route or a layer needs that outlives a request; optional parts are None when not configured."""

    settings: Settings
    inference: InferenceService
    pool: UpstreamPool
    engine: AsyncEngine | None  # None without DATABASE_URL
    db_sessions: async_sessionmaker[AsyncSession] | None
    key_store: KeyStore
    audit: AuditLog
    conversations: Conversations
    redis: Redis | None  # None without REDIS_URL (and then no limiter, cache or redis_policy)
    redis_policy: RedisPolicy | None
    cache: ResponseCache | None
    vectors: VectorService
    pipeline: Pipeline
    observer: RequestObserver
    status_board: StatusBoard
    readiness: Readiness
    reloader: Reloader

    @property
    def catalog(self) -> Catalog:
        """The catalogue in force: the reloader swaps it (on the inference service) without a restart."""
        return self.inference.catalog


def services_of(app: Starlette) -> Services:
    """The app's services (set by the lifespan before the first request)."""
    services: Services = app.state.services
    return services


def scope_services(scope: Scope) -> Services:
    """The services from an ASGI scope (Starlette puts the app in it), for the pure ASGI layers."""
    services: Services = scope["app"].state.services
    return services
