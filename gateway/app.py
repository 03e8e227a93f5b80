"""create_app(): settings, catalogue, long-lived clients in the lifespan, middleware, routes, error handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from . import __version__
from .api import health, openai
from .auth import PERMISSION_ATTR, StaticKeyStore
from .catalog import Catalog, load_catalog
from .errors import install_error_handlers
from .inference import InferenceService
from .middleware import AuthenticationMiddleware, RequestIdMiddleware
from .settings import Settings, config_environment
from .upstream.pool import UpstreamPool

PUBLIC_PATHS = frozenset({"/health"})
ROUTERS = (health.router, openai.router)


def create_app(settings: Settings | None = None, catalog: Catalog | None = None) -> FastAPI:
    """Build the gateway; fails fast on missing secrets or a bad models file."""
    settings = settings or Settings()  # type: ignore[call-arg]
    catalog = catalog or load_catalog(settings.config_path, profile=settings.profile, env=config_environment())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = UpstreamPool(
            catalog,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            read_timeout_s=settings.upstream_read_timeout_s,
            total_timeout_s=settings.upstream_total_timeout_s,
            pool_size=settings.upstream_pool_size,
        )
        await pool.start()
        app.state.inference = InferenceService(settings=settings, catalog=catalog, pool=pool)
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(title="Citadel LLM Server", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    for router in ROUTERS:
        assert_every_route_guarded(router)
        app.include_router(router)
    install_error_handlers(app)
    # Added last = outermost: the request id exists before authentication can refuse a request.
    app.add_middleware(
        AuthenticationMiddleware,
        key_store=StaticKeyStore(settings.admin_key.get_secret_value()),
        public_paths=PUBLIC_PATHS,
    )
    app.add_middleware(RequestIdMiddleware)
    return app


def _permissions(dependant: Dependant) -> list[str]:
    found = []
    for sub in dependant.dependencies:
        if sub.call is not None and hasattr(sub.call, PERMISSION_ATTR):
            found.append(getattr(sub.call, PERMISSION_ATTR))
        found.extend(_permissions(sub))
    return found


def assert_every_route_guarded(router: APIRouter) -> None:
    """Deny by default: refuse to build an app with an API route that declares no permission."""
    for route in router.routes:
        if isinstance(route, APIRoute) and not _permissions(route.dependant):
            raise RuntimeError(f"route {route.path} declares no permission (use require(...) or public)")
