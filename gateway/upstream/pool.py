"""One pooled aiohttp session per backend replica, and the translation of its failures to API errors."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import orjson

from ..catalog import Catalog, ModelSpec
from ..errors import APIError, UpstreamError, UpstreamStatus, UpstreamTimeout, UpstreamUnavailable

log = logging.getLogger(__name__)


class UpstreamPool:
    """Long-lived HTTP sessions to every backend; built once in the app's lifespan."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        total_timeout_s: float,
        pool_size: int,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=total_timeout_s, connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._pool_size = pool_size
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        # Round robin over replicas; health-aware balancing replaces this in the resilience work.
        self._rotation = {name: itertools.cycle(spec.backends) for name, spec in catalog.models.items()}
        self._backends = sorted({url for spec in catalog.models.values() for url in spec.backends})

    async def start(self) -> None:
        for url in self._backends:
            connector = aiohttp.TCPConnector(limit=self._pool_size, ttl_dns_cache=300, enable_cleanup_closed=True)
            self._sessions[url] = aiohttp.ClientSession(
                base_url=url,
                connector=connector,
                timeout=self._timeout,
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )

    async def close(self) -> None:
        await asyncio.gather(*(session.close() for session in self._sessions.values()))
        self._sessions.clear()

    def pick(self, spec: ModelSpec) -> aiohttp.ClientSession:
        """The session of the replica that takes the next request for this model."""
        return self._sessions[next(self._rotation[spec.name])]

    async def post(self, spec: ModelSpec, path: str, payload: bytes, *, request_id: str) -> aiohttp.ClientResponse:
        """Send a request and return the response with its headers read (the body is the caller's)."""
        session = self.pick(spec)
        with translate_errors(spec):
            return await session.post(
                path,
                data=payload,
                headers={"Content-Type": "application/json", "X-Request-ID": request_id},
            )


@contextmanager
def translate_errors(spec: ModelSpec) -> Iterator[None]:
    """Turn aiohttp's failures into the most specific API error, naming the model, not the host."""
    try:
        yield
    except APIError:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeout(f"The model '{spec.name}' did not answer in time.") from exc
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamUnavailable(
            f"The model '{spec.name}' is unavailable: its server cannot be reached.", param="model"
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        log.warning("upstream exchange for %s broke: %s", spec.name, type(exc).__name__)
        raise UpstreamError(f"The connection to the model '{spec.name}' broke.") from exc


def status_error(spec: ModelSpec, status: int, body: bytes) -> UpstreamStatus:
    """An upstream error answer as an API error: 4xx keep their message, 5xx get a generic one."""
    message, param, code = "", None, None
    try:
        parsed = orjson.loads(body)
        error = parsed.get("error", parsed) if isinstance(parsed, dict) else {}
        if isinstance(error, dict):
            message = str(error.get("message") or "")
            param = error.get("param") if isinstance(error.get("param"), str) else None
            code = error.get("code") if isinstance(error.get("code"), (str, int)) else None
    except orjson.JSONDecodeError:
        pass
    if status >= 500 or not message:
        # 5xx messages can carry server internals (paths, stack details, even request text): neither passed
        # on nor logged; the model server's own log has them.
        log.warning("model %s answered %s", spec.name, status)
        return UpstreamStatus(status, f"The model server for '{spec.name}' failed to process the request.")
    # The upstream knows the model by its served name; the client should only see the name it used.
    return UpstreamStatus(status, message.replace(spec.upstream_name, spec.name), param=param, code=code)
