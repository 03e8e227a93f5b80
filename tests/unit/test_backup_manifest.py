"""The backup's container and its checks (gateway/backup/archive.py), finding PostgreSQL's tools, and the
advice on a restored schema's revision: everything of `citadel backup|restore` that needs no server."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from gateway.backup import BackupError
from gateway.backup import postgres as pg
from gateway.backup.archive import human_size, is_tar, opened, staged, verify, write_manifest

CONTENT = {"created_at": "2025-01-01T00:00:00Z", "gateway_version": "0.1.0", "postgres": None, "qdrant": None}


def quiet(line: str) -> None:
    pass


def make_backup(root: Path) -> dict[str, object]:
    (root / "postgres").mkdir(parents=True)
    (root / "postgres" / "llm.dump").write_bytes(b"PGDMP" + bytes(range(256)) * 10)
    (root / "qdrant").mkdir()
    (root / "qdrant" / "docs.jsonl").write_text('{"collection": "docs"}\n')
    return write_manifest(root, CONTENT)


def test_the_manifest_lists_every_file_with_its_size_and_checksum(tmp_path: Path) -> None:
    manifest = make_backup(tmp_path)
    assert manifest["format"] == "citadel-backup" and manifest["format_version"] == 1
    files = manifest["files"]
    assert isinstance(files, dict) and set(files) == {"postgres/llm.dump", "qdrant/docs.jsonl"}
    assert files["postgres/llm.dump"]["size"] == 5 + 2560
    assert manifest["total_bytes"] == 5 + 2560 + len('{"collection": "docs"}\n')
    assert verify(tmp_path, echo=quiet) == json.loads((tmp_path / "manifest.json").read_text())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: (root / "postgres" / "llm.dump").write_bytes(b"PGDMP changed"), "corrupt: postgres/llm.dump"),
        (lambda root: (root / "qdrant" / "docs.jsonl").unlink(), "incomplete: qdrant/docs.jsonl is missing"),
        (lambda root: (root / "qdrant" / "stray.jsonl").write_text("{}"), "does not list: qdrant/stray.jsonl"),
        (lambda root: (root / "manifest.json").unlink(), "no manifest.json"),
        (lambda root: (root / "manifest.json").write_text("[1, 2"), "not valid JSON"),
        (lambda root: (root / "manifest.json").write_text('{"format": "other"}'), "not a Citadel backup manifest"),
        (
            lambda root: (root / "manifest.json").write_text('{"format": "citadel-backup", "format_version": 9}'),
            "format version 9",
        ),
        (
            lambda root: (root / "manifest.json").write_text(
                '{"format": "citadel-backup", "format_version": 1, "files": {"a": {"size": "1"}}}'
            ),
            "no valid file list",
        ),
        (
            lambda root: (root / "manifest.json").write_text(
                '{"format": "citadel-backup", "format_version": 1, "files": {}, "postgres": {"file": "x.dump"}}'
            ),
            "does not describe its parts",
        ),
        (
            lambda root: (root / "manifest.json").write_text(
                '{"format": "citadel-backup", "format_version": 1, "files": {}, "qdrant": {"collections": [{}]}}'
            ),
            "does not describe its parts",
        ),
    ],
)
def test_a_damaged_backup_is_refused(tmp_path: Path, damage: object, message: str) -> None:
    make_backup(tmp_path)
    damage(tmp_path)  # type: ignore[operator]
    with pytest.raises(BackupError, match=message):
        verify(tmp_path, echo=quiet)


@pytest.mark.parametrize("name", ["b.tar", "b.tar.gz", "b.tgz", "folder"])
def test_a_backup_appears_only_when_complete_and_reads_back(tmp_path: Path, name: str) -> None:
    destination = tmp_path / name
    with staged(destination, echo=quiet) as root:
        assert not destination.exists() and root.parent == tmp_path and root.name.startswith(f".{name}.partial-")
        make_backup(root)
    assert destination.exists() and is_tar(destination) == (name != "folder")
    assert [path.name for path in tmp_path.iterdir()] == [name]  # the staging folder is gone
    assert destination.stat().st_mode & 0o077 == 0  # key digests and prompts: the owner's only
    if is_tar(destination):
        with tarfile.open(destination) as tar:
            assert tar.getnames()[0] == "manifest.json"
    with opened(destination, echo=quiet) as (root, manifest):
        assert (root / "postgres" / "llm.dump").read_bytes().startswith(b"PGDMP")
        assert manifest["gateway_version"] == "0.1.0"
    if is_tar(destination):
        assert not root.exists()  # the unpacked copy is removed


def test_a_failed_backup_leaves_nothing_and_nothing_is_overwritten(tmp_path: Path) -> None:
    destination = tmp_path / "b.tar"
    with pytest.raises(RuntimeError), staged(destination, echo=quiet) as root:
        make_backup(root)
        raise RuntimeError("pg_dump died")
    assert list(tmp_path.iterdir()) == []
    destination.write_text("an older backup")
    with pytest.raises(BackupError, match="already exists"), staged(destination, echo=quiet):
        pass
    with pytest.raises(BackupError, match="does not exist"), staged(tmp_path / "no" / "b.tar", echo=quiet):
        pass


def test_archives_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="no such backup"), opened(tmp_path / "none.tar", echo=quiet):
        pass
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"\x00not a tar at all" * 100)
    with pytest.raises(BackupError, match="not a readable backup archive"), opened(garbage, echo=quiet):
        pass


def test_sizes_for_people() -> None:
    assert [human_size(n) for n in (12, 2048, 5 << 20, 3 << 30)] == ["12 B", "2.0 KB", "5.0 MB", "3.0 GB"]


# ---- PostgreSQL's tools -----------------------------------------------------------------------------------


def fake_tool(folder: Path, name: str, version: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version} (Debian {version}-1)'\n")
    path.chmod(0o755)
    return path


def test_the_first_tool_new_enough_is_chosen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = fake_tool(tmp_path / "old", "pg_dump", "15.18"), fake_tool(tmp_path / "new", "pg_dump", "18.6")
    monkeypatch.setattr(pg, "_candidates", lambda name: [old, new])
    assert pg.find_tool("pg_dump", at_least=15, why="").path == old
    chosen = pg.find_tool("pg_dump", at_least=17, why="")
    assert (chosen.path, chosen.version, chosen.major) == (new, "18.6", 18)
    with pytest.raises(BackupError) as refused:
        pg.find_tool("pg_dump", at_least=19, why="the server runs PostgreSQL 19")
    message = str(refused.value)
    assert "pg_dump 18.6" in message and "too old" in message and "postgresql-client-19" in message


def test_a_missing_tool_names_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "pg_dump"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setattr(pg, "_candidates", lambda name: [broken, tmp_path / "absent"])
    with pytest.raises(BackupError, match=r"pg_dump not found: .*apt-get install postgresql-client"):
        pg.find_tool("pg_dump", at_least=15, why="")


def test_candidates_come_from_the_setting_the_path_and_the_embedded_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = fake_tool(tmp_path / "own", "pg_restore", "17.2")
    monkeypatch.setenv("CITADEL_PG_BIN_DIR", str(own.parent))
    found = pg._candidates("pg_restore")
    assert found[0] == own
    assert pg._embedded_bin() is not None and found[-1] == pg._embedded_bin() / "pg_restore"  # type: ignore[operator]


def test_the_password_travels_in_the_environment_only() -> None:
    target = pg.Target.from_url("postgresql+asyncpg://citadel:s3cr%40t@db.internal:6543/citadel_ai?sslmode=require")
    env = target.environment()
    assert (env["PGHOST"], env["PGPORT"], env["PGUSER"], env["PGDATABASE"]) == (
        "db.internal",
        "6543",
        "citadel",
        "citadel_ai",
    )
    assert env["PGPASSWORD"] == "s3cr@t" and env["PGSSLMODE"] == "require"
    assert "s3cr" not in target.where and target.scrub("failed for s3cr@t") == "failed for ***"
    with pytest.raises(BackupError, match="must start with postgresql://"):
        pg.Target.from_url("mysql://x@y/z")


def test_the_first_error_line_of_a_tool() -> None:
    lines = ["pg_dump: dumping contents of table", "pg_dump: error: query failed: ERROR:  permission denied"]
    assert pg._first_error("pg_dump", lines, 1) == "query failed: ERROR:  permission denied"
    assert pg._first_error("psql", ["something odd"], 3) == "something odd"
    assert pg._first_error("psql", [], 3) == "exit status 3"


def test_advice_on_the_restored_revision() -> None:
    from alembic.script import ScriptDirectory

    from gateway.store.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert "nothing to migrate" in pg.revision_advice(head)
    assert "run `citadel migrate`" in pg.revision_advice("0001")
    assert "does not know" in pg.revision_advice("ffffffffffff")
