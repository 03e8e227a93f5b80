"""Keys, roles and the deny-by-default guard."""

import uuid

import pytest
from fastapi import APIRouter

from gateway.app import assert_every_route_guarded
from gateway.auth import Permission, Principal, Role, bearer_token
from gateway.keystore import BootstrapKeyStore


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
