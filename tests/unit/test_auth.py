"""Keys, roles and the deny-by-default guard."""

import uuid

import pytest
from fastapi import APIRouter

from gateway.admission.priority import Priority
from gateway.app import assert_every_route_guarded
from gateway.auth import ROLE_QUEUE_WEIGHTS, Permission, Principal, Role, bearer_token
from gateway.keystore import BootstrapKeyStore, CachedKeyStore, principal_from_row
from gateway.store.models import ApiKey


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (b"Bearer abc", "abc"),
        (b"bearer  abc ", "abc"),
        (b"Basic abc", None),
        (b"Bearer", None),
        (b"Bearer ", None),
        (None, None),
        (b"Bearer " + b"x" * 2000, None),
    ],
)
def test_bearer_token(header: bytes | None, token: str | None) -> None:
    assert bearer_token(header) == token


async def test_bootstrap_key_store_accepts_only_the_admin_key() -> None:
    store = BootstrapKeyStore("the-admin-key-123456")
    principal = await store.authenticate("the-admin-key-123456")
    assert principal is not None and principal.role is Role.ADMIN
    # Interactive, with the admin role's queue weight.
    assert principal.priority is Priority.INTERACTIVE and principal.queue_weight is None
    assert principal.weight == ROLE_QUEUE_WEIGHTS[Role.ADMIN]
    assert await store.authenticate("the-admin-key-12345") is None
    assert await store.authenticate("") is None


def test_roles_grant_only_their_permissions() -> None:
    viewer = Principal(key_id=uuid.uuid4(), name="v", role=Role.VIEWER)
    user = Principal(key_id=uuid.uuid4(), name="u", role=Role.USER, allowed_models=frozenset({"phi3"}))
    assert viewer.can(Permission.MODELS_READ) and not viewer.can(Permission.INFERENCE)
    assert user.can(Permission.INFERENCE) and not user.can(Permission.ADMIN)
    assert user.may_use("phi3") and not user.may_use("mixtral")


def test_an_unguarded_route_cannot_be_built() -> None:
    router = APIRouter()

    @router.get("/forgotten")
    async def forgotten() -> dict[str, str]:
        return {}

    with pytest.raises(RuntimeError, match="/forgotten declares no permission"):
        assert_every_route_guarded(router)


class _CountingKeyStore(CachedKeyStore):
    """The cache in front of a stand-in for the key table: one valid key, and a count of the lookups."""

    def __init__(self, valid: str, **limits: int) -> None:
        super().__init__(bootstrap=BootstrapKeyStore("ck-admin-" + "a" * 24), sessions=None, ttl_s=60, **limits)  # type: ignore[arg-type]
        self.valid = valid
        self.queries = 0

    async def _query(self, presented_key: str) -> Principal | None:
        self.queries += 1
        return Principal(key_id=uuid.uuid4(), name="k", role=Role.USER) if presented_key == self.valid else None


async def test_random_tokens_are_remembered_as_misses_and_never_evict_a_valid_key() -> None:
    store = _CountingKeyStore("ck_valid", max_entries=10, max_misses=5)
    assert await store.authenticate("ck_valid") is not None
    for _attempt in range(2):
        for number in range(100):  # a flood of random tokens: far more than either cache holds
            assert await store.authenticate(f"ck_random{number}") is None
    assert store.queries == 1 + 200  # each random token looked up (the miss cache holds only the last 5) ...
    assert await store.authenticate("ck_valid") is not None
    assert store.queries == 201  # ... but the valid key is still cached: no lookup for it
    assert await store.authenticate("ck_random99") is None
    assert store.queries == 201  # a recent miss is answered from the miss cache


def test_a_keys_queue_weight_is_its_own_else_its_roles() -> None:
    assert set(ROLE_QUEUE_WEIGHTS) == set(Role)
    for role in Role:
        assert Principal(key_id=uuid.uuid4(), name="k", role=role).weight == ROLE_QUEUE_WEIGHTS[role]
    assert Principal(key_id=uuid.uuid4(), name="k", role=Role.USER, queue_weight=2.5).weight == 2.5


def _row(**fields: object) -> ApiKey:
    base: dict[str, object] = {"id": uuid.uuid4(), "name": "k", "prefix": "ck_x", "key_hash": b"h", "role": "user"}
    return ApiKey(**(base | fields))


@pytest.mark.parametrize(
    ("fields", "priority", "queue_weight", "weight"),
    [
        ({"priority": "interactive"}, Priority.INTERACTIVE, None, 1.0),
        ({"priority": "batch", "queue_weight": 2.0}, Priority.BATCH, 2.0, 2.0),
        ({"priority": "batch", "queue_weight": 0.5, "role": "admin"}, Priority.BATCH, 0.5, 0.5),
    ],
)
def test_principal_from_row_carries_the_class_and_weight(
    fields: dict[str, object], priority: Priority, queue_weight: float | None, weight: float
) -> None:
    row = _row(allowed_models=["a", "fast"], requests_per_minute=7, **fields)
    principal = principal_from_row(row)
    assert principal.priority is priority and principal.queue_weight == queue_weight and principal.weight == weight
    assert principal.key_id == row.id and principal.allowed_models == frozenset({"a", "fast"})
    assert principal.requests_per_minute == 7
