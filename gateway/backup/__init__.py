"""`citadel backup` and `citadel restore`: the `llm` schema and this gateway's Qdrant collections, in one place.

A backup is ONE directory, or one `.tar` archive (`.tar.gz` / `.tgz` compressed) of that directory:

    manifest.json            what is in it, and the size and SHA-256 of every other file (archive.py)
    postgres/llm.dump        pg_dump of schema `llm` (custom format), alembic's version table included (postgres.py)
    qdrant/<name>.snapshot   one Qdrant snapshot per collection, from a Qdrant server (QDRANT_URL), or
    qdrant/<name>.jsonl      every point of a collection of the embedded local mode (vectors.py)

`restore` verifies the manifest and every checksum before it touches anything, refuses to overwrite data
without `--force`, and then restores PostgreSQL in one transaction and each collection in turn. The command
line is cli.py; every expected failure is a `BackupError`, printed as one line.
"""

from __future__ import annotations

from collections.abc import Callable

Echo = Callable[[str], None]


class BackupError(Exception):
    """A backup or restore cannot go on; the message is one line, safe to print (never a password)."""
