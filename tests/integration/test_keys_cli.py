"""`citadel keys create|list|update|revoke` against a real PostgreSQL, and a gateway that honours the result."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

from gateway.admission.priority import Priority
from gateway.services import services_of
from tests.integration.conftest import running_db_gateway

ROOT = Path(__file__).resolve().parents[2]


def citadel(*args: str, url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


async def test_keys_from_the_command_line(tmp_path: Path, postgres_url: str, fake_upstream_url: str) -> None:
    created = citadel("keys", "create", "--name", "cli-made", "--role", "viewer", url=postgres_url, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    fields = dict(line.split(":", 1) for line in created.stdout.splitlines() if ":" in line)
    key_id, secret = fields["id"].strip(), fields["key"].strip()
    assert secret.startswith("ck_")

    listing = citadel("keys", "list", url=postgres_url, cwd=tmp_path)
    assert key_id in listing.stdout and secret not in listing.stdout

    async with running_db_gateway(tmp_path, postgres_url, fake_upstream_url, key_cache_ttl_s=0.2) as gw:
        assert (await gw.client.get("/v1/models", headers=gw.headers(secret))).status_code == 200
        revoked = citadel("keys", "revoke", key_id, url=postgres_url, cwd=tmp_path)
        assert revoked.returncode == 0, revoked.stderr
        # Revoked elsewhere: this gateway notices once its cached lookup is older than the TTL.
        await asyncio.sleep(0.3)
        assert (await gw.client.get("/v1/models", headers=gw.headers(secret))).status_code == 401
        audit = (await gw.client.get("/admin/audit?kind=admin&limit=500", headers=gw.headers())).json()["data"]
        assert {(row["action"], row["target"]) for row in audit} >= {("keys.create", key_id), ("keys.revoke", key_id)}

    assert "revoked" in citadel("keys", "list", "--all", url=postgres_url, cwd=tmp_path).stdout
    missing = citadel("keys", "revoke", "00000000-0000-0000-0000-000000000001", url=postgres_url, cwd=tmp_path)
    assert missing.returncode == 1 and "no key" in missing.stderr
    no_db = citadel("keys", "list", url="", cwd=tmp_path)
    assert no_db.returncode == 2 and "DATABASE_URL" in no_db.stderr


async def test_a_keys_class_and_weight_from_the_command_line(
    tmp_path: Path, postgres_url: str, fake_upstream_url: str
) -> None:
    made = ("keys", "create", "--name", "cli-batch", "--priority", "batch", "--weight", "2")
    created = citadel(*made, url=postgres_url, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    fields = {
        k.strip(): v.strip() for k, v in (line.split(":", 1) for line in created.stdout.splitlines() if ":" in line)
    }
    key_id, secret = fields["id"], fields["key"]
    assert (fields["class"], fields["weight"]) == ("batch", "2")
    listed = [line.split() for line in citadel("keys", "list", url=postgres_url, cwd=tmp_path).stdout.splitlines()]
    assert listed[0][:5] == ["id", "prefix", "role", "class", "weight"]
    assert [row[3:5] for row in listed if row[0] == key_id] == [["batch", "2"]]

    async with running_db_gateway(tmp_path, postgres_url, fake_upstream_url, key_cache_ttl_s=0.2) as gw:
        key_store = services_of(gw.app).key_store
        principal = await key_store.authenticate(secret)
        assert principal is not None and (principal.priority, principal.weight) == (Priority.BATCH, 2.0)
        updated = citadel("keys", "update", key_id, "--priority", "interactive", url=postgres_url, cwd=tmp_path)
        assert updated.returncode == 0, updated.stderr
        assert "class interactive, weight 2" in updated.stdout  # the weight not given is kept
        cleared = citadel("keys", "update", key_id, "--weight", "default", url=postgres_url, cwd=tmp_path)
        assert cleared.returncode == 0 and "weight role" in cleared.stdout, cleared.stderr
        await asyncio.sleep(0.3)  # changed elsewhere: this gateway reads the key again after its cache TTL
        principal = await key_store.authenticate(secret)
        assert principal is not None and (principal.priority, principal.queue_weight) == (Priority.INTERACTIVE, None)

    nothing = citadel("keys", "update", key_id, url=postgres_url, cwd=tmp_path)
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr
    missing = citadel("keys", "update", str(uuid.UUID(int=1)), "--priority", "batch", url=postgres_url, cwd=tmp_path)
    assert missing.returncode == 1 and "no key" in missing.stderr
