"""`citadel keys create|list|update|revoke`: the admin API's key operations, straight against DATABASE_URL."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from .admission.priority import Priority
from .auth import Role
from .protocol.admin import MAX_QUEUE_WEIGHT, MIN_QUEUE_WEIGHT
from .store import keys as key_rows
from .store.db import create_engine, create_sessionmaker, is_connection_error
from .store.models import AuditEvent


def _positive(text: str) -> int:
    """A limit or quota: a whole number from 1 to 2**31 - 1 (the column is a PostgreSQL integer)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 2**31 - 1:
        raise argparse.ArgumentTypeError(f"must be between 1 and {2**31 - 1}: {value}")
    return value


def _days(text: str) -> float:
    """A key's lifetime in days: more than 0, at most 100 years."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 36_500:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 36500: {text}")
    return value


def _weight(text: str) -> float | None:
    """A queue weight from MIN_QUEUE_WEIGHT to MAX_QUEUE_WEIGHT; `default` puts the role's back (update)."""
    if text.strip().lower() == "default":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not MIN_QUEUE_WEIGHT <= value <= MAX_QUEUE_WEIGHT:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"must be from {MIN_QUEUE_WEIGHT:g} to {MAX_QUEUE_WEIGHT:g}: {text}")
    return value


def _add_admission(parser: argparse.ArgumentParser, *, create: bool) -> None:
    parser.add_argument(
        "--priority",
        choices=[p.value for p in Priority],
        default=Priority.INTERACTIVE.value if create else None,
        help="the highest class its requests may run in (a batch key's requests are always batch)",
    )
    parser.add_argument(
        "--weight",
        type=_weight,
        # Left out of an update's arguments when not given, so that `--weight default` (None) can clear it.
        default=None if create else argparse.SUPPRESS,
        help="its share in the admission queue (2: served twice as often as a key of 1); default: the role's",
    )


def add_keys_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="create, list, update and revoke API keys (DATABASE_URL from env or .env)")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="create a key and print its secret (shown only once)")
    create.add_argument("--name", required=True)
    create.add_argument("--role", choices=[r.value for r in Role], default=Role.USER.value)
    create.add_argument("--models", help="comma-separated models the key may use (default: all)")
    create.add_argument("--rpm", type=_positive, help="requests per minute")
    create.add_argument("--tpm", type=_positive, help="tokens per minute")
    create.add_argument("--control-rpm", type=_positive, help="control-plane calls per minute")
    create.add_argument("--max-collections", type=_positive, help="vector collections the key may own")
    create.add_argument("--max-documents", type=_positive, help="vector documents the key may store")
    create.add_argument("--expires-in-days", type=_days)
    _add_admission(create, create=True)
    listing = actions.add_parser("list", help="list keys (prefixes, never secrets)")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    update = actions.add_parser("update", help="change a key's class or queue weight (`--weight default` clears it)")
    update.add_argument("key_id", type=uuid.UUID)
    _add_admission(update, create=False)
    revoke = actions.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id", type=uuid.UUID)


def run_keys(args: argparse.Namespace, database_url: str) -> int:
    try:
        return asyncio.run(_run(args, database_url))
    except Exception as exc:
        if is_connection_error(exc):
            print("citadel: the database is unreachable (check DATABASE_URL)", file=sys.stderr)
            return 1
        raise


async def _run(args: argparse.Namespace, database_url: str) -> int:
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            if args.keys_command == "create":
                return await _create(session, args)
            if args.keys_command == "list":
                return await _list(session, include_revoked=args.all)
            if args.keys_command == "update":
                return await _update(session, args)
            return await _revoke(session, args.key_id)
    finally:
        await engine.dispose()


async def _create(session: AsyncSession, args: argparse.Namespace) -> int:
    expires = datetime.now(UTC) + timedelta(days=args.expires_in_days) if args.expires_in_days else None
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    row, secret = await key_rows.create_key(
        session=session,
        name=args.name,
        role=args.role,
        allowed_models=models,
        requests_per_minute=args.rpm,
        tokens_per_minute=args.tpm,
        control_requests_per_minute=args.control_rpm,
        vector_quota_collections=args.max_collections,
        vector_quota_documents=args.max_documents,
        expires_at=expires,
        priority=Priority(args.priority),
        queue_weight=args.weight,
    )
    _audit(session, action="keys.create", target=str(row.id))
    await session.commit()
    print(f"id:     {row.id}\nname:   {row.name}\nrole:   {row.role}\nprefix: {row.prefix}")
    print(f"class:  {row.priority}\nweight: {_shown_weight(row.queue_weight)}")
    print(f"key:    {secret}\n\nStore the key now: it is not kept and cannot be shown again.")
    return 0


async def _list(session: AsyncSession, *, include_revoked: bool) -> int:
    rows = await key_rows.list_keys(session=session, limit=10_000, offset=0, include_revoked=include_revoked)
    print(f"{'id':36}  {'prefix':11}  {'role':6}  {'class':11}  {'weight':7}  {'state':8}  name")
    now = datetime.now(UTC)
    for row in rows:
        state = "revoked" if row.revoked_at else ("expired" if not key_rows.is_usable(row, now=now) else "active")
        weight = _shown_weight(row.queue_weight)
        print(f"{row.id!s:36}  {row.prefix:11}  {row.role:6}  {row.priority:11}  {weight:7}  {state:8}  {row.name}")
    return 0


async def _update(session: AsyncSession, args: argparse.Namespace) -> int:
    changes: dict[str, object] = {}
    if args.priority is not None:
        changes["priority"] = Priority(args.priority)
    if "weight" in vars(args):
        changes["queue_weight"] = args.weight
    if not changes:
        print("citadel: nothing to change (give --priority or --weight)", file=sys.stderr)
        return 2
    row = await key_rows.update_key(session=session, key_id=args.key_id, changes=changes)
    if row is None:
        print(f"citadel: no key with id {args.key_id}", file=sys.stderr)
        return 1
    _audit(session, action="keys.update", target=str(args.key_id))
    await session.commit()
    print(f"updated {args.key_id} ({row.name}): class {row.priority}, weight {_shown_weight(row.queue_weight)}")
    print("gateways use the new values within their key cache TTL")
    return 0


def _shown_weight(weight: float | None) -> str:
    return "role" if weight is None else f"{weight:g}"


async def _revoke(session: AsyncSession, key_id: uuid.UUID) -> int:
    row = await key_rows.revoke_key(session=session, key_id=key_id)
    if row is None:
        print(f"citadel: no key with id {key_id}", file=sys.stderr)
        return 1
    _audit(session, action="keys.revoke", target=str(key_id))
    await session.commit()
    print(f"revoked {key_id} ({row.name}); gateways stop accepting it within their key cache TTL")
    return 0


def _audit(session: AsyncSession, *, action: str, target: str) -> None:
    """Admin actions from the command line are audited like the API's (written in the same transaction)."""
    session.add(
        AuditEvent(
            event_id=uuid.uuid4(),
            occurred_at=datetime.now(UTC),
            kind="admin",
            role="admin",
            method="CLI",
            endpoint="citadel keys",
            status=0,
            latency_ms=0.0,
            cache_hit=False,
            action=action,
            target=target,
        )
    )
