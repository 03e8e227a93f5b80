"""Finding the caller behind a presented key: the bootstrap admin key, then database keys through a cache.

The cache keeps PostgreSQL off the request path: a key is looked up once per `ttl_s` (found or not),
concurrent misses for one key share one query, and if the database is unreachable a key seen before
keeps working on its last known record. A revoked key can therefore pass for at most `ttl_s` seconds on
another worker when Redis is unavailable; with Redis, the revocation is published and every worker forgets
the key at once (gateway/revocation.py).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .admission.priority import Priority
from .auth import Principal, Role, key_digest
from .errors import DatabaseUnavailable
from .observability.health_metrics import count_postgres_failure
from .store import keys as key_rows
from .store.models import BOOTSTRAP_ADMIN_ID, ApiKey

log = logging.getLogger(__name__)


class BootstrapKeyStore:
    """Only the admin key from CITADEL_ADMIN_KEY (the gateway without a database)."""

    def __init__(self, admin_key: str) -> None:
        self._admin_digest = key_digest(admin_key)
        self.admin = Principal(key_id=BOOTSTRAP_ADMIN_ID, name="bootstrap-admin", role=Role.ADMIN)

    def match(self, digest: bytes) -> Principal | None:
        return self.admin if hmac.compare_digest(digest, self._admin_digest) else None

    async def authenticate(self, presented_key: str) -> Principal | None:
        return self.match(key_digest(presented_key))

    def forget(self, key_id: object) -> None:
        """Nothing is cached here."""

    def forget_all(self) -> None:
        """Nothing is cached here."""


def principal_from_row(row: ApiKey) -> Principal:
    """The caller a key row stands for (the database's CHECKs keep `role` and `priority` to known names)."""
    return Principal(
        key_id=row.id,
        name=row.name,
        role=Role(row.role),
        allowed_models=frozenset(row.allowed_models) if row.allowed_models is not None else None,
        requests_per_minute=row.requests_per_minute,
        tokens_per_minute=row.tokens_per_minute,
        control_requests_per_minute=row.control_requests_per_minute,
        vector_quota_collections=row.vector_quota_collections,
        vector_quota_documents=row.vector_quota_documents,
        expires_at=row.expires_at,
        priority=Priority(row.priority),
        queue_weight=row.queue_weight,
    )


class _Entry:
    __slots__ = ("fresh_until", "principal")

    def __init__(self, principal: Principal | None, fresh_until: float) -> None:
        self.principal = principal
        self.fresh_until = fresh_until


class CachedKeyStore:
    """Bootstrap admin key first, then database keys, cached by digest for `ttl_s` seconds.

    Keys found and keys not found are remembered apart, each bounded: a flood of random tokens is answered from
    the miss cache after its first lookup each, and only ever evicts other misses, never a valid key's entry.
    """

    def __init__(
        self,
        *,
        bootstrap: BootstrapKeyStore,
        sessions: async_sessionmaker[AsyncSession],
        ttl_s: float,
        max_entries: int = 100_000,
        max_misses: int = 10_000,
    ) -> None:
        self.bootstrap = bootstrap
        self._sessions = sessions
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._max_misses = max_misses
        # Bounded, so random keys sent by an attacker cannot grow them without limit.
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._misses: OrderedDict[bytes, float] = OrderedDict()  # digest -> remembered until (monotonic)
        self._inflight: dict[bytes, asyncio.Future[Principal | None]] = {}

    async def authenticate(self, presented_key: str) -> Principal | None:
        digest = key_digest(presented_key)
        admin = self.bootstrap.match(digest)
        if admin is not None:
            return admin
        now = time.monotonic()
        entry = self._cache.get(digest)
        if entry is not None and entry.fresh_until > now:
            return _still_valid(entry.principal)
        if entry is None and self._misses.get(digest, 0.0) > now:
            return None
        principal = await self._lookup_once(digest, presented_key, stale=entry)
        return _still_valid(principal)

    def forget(self, key_id: object) -> None:
        """Drop a key from this worker's cache at once (revoked here, or announced through Redis)."""
        for digest in [d for d, e in self._cache.items() if e.principal and e.principal.key_id == key_id]:
            del self._cache[digest]

    def forget_all(self) -> None:
        """Drop every cached lookup (revocations may have been missed while Redis was away)."""
        self._cache.clear()
        self._misses.clear()

    async def _lookup_once(self, digest: bytes, presented_key: str, *, stale: _Entry | None) -> Principal | None:
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            principal = await self._query(presented_key)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            count_postgres_failure("key_lookup")
            if stale is not None:
                # Known keys keep working while the database is away.
                log.warning("key lookup failed (%s); using the cached record", type(exc).__name__)
                principal = stale.principal
                self._remember(digest, principal)
                future.set_result(principal)
                return principal
            error = DatabaseUnavailable("The key database is unreachable; try again shortly.")
            future.set_exception(error)
            future.exception()  # mark retrieved: waiters get it through shield
            raise error from exc
        finally:
            self._inflight.pop(digest, None)
        self._remember(digest, principal)
        future.set_result(principal)
        return principal

    async def _query(self, presented_key: str) -> Principal | None:
        async with self._sessions() as session:
            row = await key_rows.find_by_secret(session=session, secret=presented_key)
        # Expiry is checked per request (_still_valid); revocation comes with the row.
        return principal_from_row(row) if row is not None and row.revoked_at is None else None

    def _remember(self, digest: bytes, principal: Principal | None) -> None:
        fresh_until = time.monotonic() + self._ttl_s
        if principal is None:
            # A key that was valid and is now revoked or unknown leaves the hit cache too.
            self._cache.pop(digest, None)
            self._misses[digest] = fresh_until
            self._misses.move_to_end(digest)
            while len(self._misses) > self._max_misses:
                self._misses.popitem(last=False)
            return
        self._misses.pop(digest, None)
        self._cache[digest] = _Entry(principal, fresh_until)
        self._cache.move_to_end(digest)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)


def _still_valid(principal: Principal | None) -> Principal | None:
    """Revocation is in the row (refreshed every ttl); expiry is checked on every request."""
    if principal is None:
        return None
    if principal.expires_at is not None and principal.expires_at <= datetime.now(UTC):
        return None
    return principal
