"""The `citadel` command's mistakes and outages as a person at a terminal meets them: one line on stderr that
says what to fix, a non-zero exit, no traceback; and never a secret echoed back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway import cli
from tests.support.ports import free_port

DOWN_URL = "postgresql+asyncpg://citadel:secret-pw@127.0.0.1:{port}/citadel"


@pytest.fixture(autouse=True)
def bare_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder without .env, and none of the developer's CITADEL_*, DATABASE_URL or REDIS_URL."""
    for name in list(os.environ):
        if name.startswith("CITADEL_") or name in {"DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"}:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_serve_without_an_admin_key_names_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("citadel: invalid or missing settings: CITADEL_ADMIN_KEY")
    assert "Traceback" not in err


def test_serve_with_a_broken_models_file_says_which_file(
    bare_environment: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    models = bare_environment / "models.yaml"
    models.write_text("models: [this is: not: valid\n")
    monkeypatch.setenv("CITADEL_ADMIN_KEY", "ck-admin-cli-test-key-0123456789")
    monkeypatch.setenv("CITADEL_CONFIG_PATH", str(models))
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("citadel: ") and "models.yaml" in err and "Traceback" not in err
    assert "ck-admin-cli-test-key" not in err


@pytest.mark.parametrize("command", [["migrate"], ["downgrade", "base"], ["keys", "list"]])
def test_database_commands_without_database_url_say_so(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("citadel: DATABASE_URL is not set") and err.count("\n") == 1


def test_database_url_comes_from_the_environment_before_dot_env(
    bare_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (bare_environment / ".env").write_text("CITADEL_DATABASE_URL=postgresql://from-file/db\n")
    assert cli.database_url() == "postgresql://from-file/db"
    monkeypatch.setenv("DATABASE_URL", "postgresql://from-env/db")
    assert cli.database_url() == "postgresql://from-env/db"


def test_migrate_against_a_server_that_is_down_is_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", DOWN_URL.format(port=free_port()))
    assert cli.main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("citadel: PostgreSQL at 127.0.0.1:") and "cannot reach the server" in err
    assert "secret-pw" not in err and "Traceback" not in err


def test_keys_against_a_server_that_is_down_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", DOWN_URL.format(port=free_port()))
    assert cli.main(["keys", "list"]) == 1
    err = capsys.readouterr().err
    assert err == "citadel: the database is unreachable (check DATABASE_URL)\n"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rpm", "0"], "must be between 1 and 2147483647: 0"),
        (["--tpm", "99999999999"], "must be between 1 and 2147483647"),
        (["--control-rpm", "ten"], "not a whole number: 'ten'"),
        (["--expires-in-days", "0"], "must be more than 0 and at most 36500"),
        (["--expires-in-days", "soon"], "not a number: 'soon'"),
        (["--role", "root"], "invalid choice: 'root'"),
        (["--priority", "urgent"], "invalid choice: 'urgent'"),
        (["--weight", "0"], "must be from 0.01 to 100: 0"),
        (["--weight", "1e-310"], "must be from 0.01 to 100: 1e-310"),
        (["--weight", "100.5"], "must be from 0.01 to 100: 100.5"),
        (["--weight", "nan"], "must be from 0.01 to 100: nan"),
        (["--weight", "heavy"], "not a number: 'heavy'"),
    ],
)
def test_key_limits_out_of_range_are_refused_before_any_database_call(
    flags: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A server that is down: a value that got past the parser would fail with "unreachable" instead.
    monkeypatch.setenv("DATABASE_URL", DOWN_URL.format(port=free_port()))
    with pytest.raises(SystemExit) as exited:
        cli.main(["keys", "create", "--name", "n", *flags])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_trusted_proxies_are_off_unless_named() -> None:
    from tests.conftest import make_settings

    models = Path("models.yaml")
    models.write_text("models: {}\n")
    assert cli.proxy_options(make_settings(models)) == (False, None)
    assert cli.proxy_options(make_settings(models, trusted_proxies=" 10.0.0.1,10.0.0.2 ")) == (
        True,
        "10.0.0.1,10.0.0.2",
    )


def test_a_given_metrics_folder_is_emptied_of_an_earlier_runs_values(
    bare_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = bare_environment / "metrics"
    folder.mkdir()
    (folder / "counter_1234.db").write_bytes(b"old values")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    assert cli._metrics_dir() == folder
    assert not list(folder.glob("*.db"))
