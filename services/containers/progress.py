"""Progress lines for slow steps: what starts, and how long it took when it ends."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


_write: Callable[[str], None] = _stderr


def write_with(writer: Callable[[str], None]) -> None:
    """Send progress lines through `writer` (the test run passes one that gets past pytest's output capture)."""
    global _write
    _write = writer


def say(message: str) -> None:
    """One progress line on the terminal, with the time of day (slow steps are matched up with logs by it)."""
    _write(f"citadel-containers {time.strftime('%H:%M:%S')} {message}")


@contextmanager
def step(what: str) -> Iterator[None]:
    """Announce a slow step, then report its duration (or that it failed, and after how long)."""
    say(f"{what} ...")
    started = time.monotonic()
    try:
        yield
    except BaseException:
        say(f"{what}: failed after {time.monotonic() - started:.0f} s")
        raise
    say(f"{what}: done in {time.monotonic() - started:.0f} s")
