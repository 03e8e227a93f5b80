"""Roles, permissions and the caller (Principal); the route guards that make every route deny by default.

Keys are only ever held as SHA-256 digests and compared in constant time; finding the key behind a
presented secret is a KeyStore's job (gateway/keystore.py).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Protocol

from fastapi import Depends, Request

from .admission.priority import Priority
from .context import context_of
from .errors import AuthenticationFailed, PermissionDenied
from .services import services_of


class Role(StrEnum):
    ADMIN = "admin"
    USER = "user"
    VIEWER = "viewer"


class Permission(StrEnum):
    MODELS_READ = "models:read"
    USAGE_READ = "usage:read"  # its own usage
    INFERENCE = "inference"
    SESSIONS = "sessions"  # its own conversation sessions
    VECTORS_READ = "vectors:read"  # list and search the vector collections it may see
    VECTORS_WRITE = "vectors:write"  # create its own collections, upsert and delete their documents
    ADMIN = "admin"


# Deny by default: a role has exactly the permissions listed here.
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.USER: frozenset(
        {
            Permission.MODELS_READ,
            Permission.USAGE_READ,
            Permission.INFERENCE,
            Permission.SESSIONS,
            Permission.VECTORS_READ,
            Permission.VECTORS_WRITE,
        }
    ),
    Role.VIEWER: frozenset({Permission.MODELS_READ, Permission.USAGE_READ, Permission.VECTORS_READ}),
}

# A key's share in the admission queue's fair ordering when it sets no `queue_weight` of its own. Equal on
# purpose: fairness is between keys, not roles. An admin key is as often a script's (an evaluation, a
# backfill) as a person's, so weighing admins more would let one such key crowd out every user; viewers
# cannot call models, so theirs never counts. A key that deserves more gets its own `queue_weight`.
ROLE_QUEUE_WEIGHTS: dict[Role, float] = {Role.ADMIN: 1.0, Role.USER: 1.0, Role.VIEWER: 1.0}


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. `key_id` and `name` are safe to log; the secret never is."""

    key_id: uuid.UUID
    name: str
    role: Role
    allowed_models: frozenset[str] | None = None  # None: every model
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    control_requests_per_minute: int | None = None  # None: the role's default (gateway/ratelimit)
    vector_quota_collections: int | None = None  # None: the settings' quota (admins: unlimited)
    vector_quota_documents: int | None = None
    expires_at: datetime | None = None
    priority: Priority = Priority.INTERACTIVE  # the highest class its requests may run in
    queue_weight: float | None = None  # None: the role's (ROLE_QUEUE_WEIGHTS)

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def weight(self) -> float:
        """The key's share in the admission queue: served twice as often as a weight-1 key when both wait."""
        return self.queue_weight if self.queue_weight is not None else ROLE_QUEUE_WEIGHTS[self.role]

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


def key_digest(key: str) -> bytes:
    """The only form in which a key is kept."""
    return hashlib.sha256(key.encode()).digest()


class KeyStore(Protocol):
    async def authenticate(self, presented_key: str) -> Principal | None: ...

    def forget(self, key_id: uuid.UUID) -> None: ...

    def forget_all(self) -> None: ...


def bearer_token(authorization: bytes | None) -> str | None:
    """The key from an `Authorization: Bearer <key>` header value, or None."""
    if not authorization or len(authorization) > 1024:
        return None
    scheme, _, token = authorization.decode("latin-1").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


# Set on each guard dependency so create_app can verify that no route goes unguarded.
PERMISSION_ATTR = "__citadel_permission__"
PUBLIC = "public"

AsyncGuard = Callable[[Request], Awaitable[Principal | None]]


def require(permission: Permission) -> AsyncGuard:
    """A route dependency: the caller (authenticated by the middleware) must hold `permission`."""

    async def guard(request: Request) -> Principal:
        ctx = context_of(request.scope)
        principal = ctx.principal
        if principal is None:
            raise AuthenticationFailed()
        if not principal.can(permission):
            raise PermissionDenied(f"This key's role ({principal.role}) may not do this ({permission}).")
        if permission is not Permission.INFERENCE:
            # Every other call counts against the key's control-plane limit (429 when over; gateway/ratelimit).
            await services_of(request.app).pipeline.admit_control(ctx)
        return principal

    setattr(guard, PERMISSION_ATTR, permission)
    return guard


async def public(request: Request) -> None:
    """A route dependency marking a route that needs no key (liveness only)."""
    return None


setattr(public, PERMISSION_ATTR, PUBLIC)


async def current_principal(request: Request) -> Principal:
    """The caller, for handlers; the route's own `require` guard has already checked the role."""
    principal = context_of(request.scope).principal
    if principal is None:
        raise AuthenticationFailed()
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]
# The guard itself as the principal: one dependency instead of two on the hot inference routes.
InferenceCaller = Annotated[Principal, Depends(require(Permission.INFERENCE))]
