"""The result of a check (`Finding`), and running checks bounded in time, where no exception escapes."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

Status = Literal["ok", "warn", "fail"]
STATUSES: tuple[Status, ...] = ("ok", "warn", "fail")
BUG_FIX = "an error in citadel doctor itself: report it with the output of `citadel doctor --json`"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing checked: `ok`, `warn` (works, but look at it) or `fail` (broken); `fix` says what to do."""

    check: str
    status: Status
    detail: str
    fix: str = ""
    latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ok(check: str, detail: str, *, latency_ms: float | None = None) -> Finding:
    return Finding(check, "ok", detail, latency_ms=latency_ms)


def warn(check: str, detail: str, fix: str, *, latency_ms: float | None = None) -> Finding:
    return Finding(check, "warn", detail, fix, latency_ms)


def fail(check: str, detail: str, fix: str, *, latency_ms: float | None = None) -> Finding:
    return Finding(check, "fail", detail, fix, latency_ms)


def worst(findings: Iterable[Finding]) -> Status:
    """`fail` if any failed, else `warn` if any warned, else `ok`."""
    statuses = {finding.status for finding in findings}
    return "fail" if "fail" in statuses else ("warn" if "warn" in statuses else "ok")


def elapsed_ms(started: float) -> float:
    """Milliseconds since `started` (a time.perf_counter() value), rounded for display."""
    return round((time.perf_counter() - started) * 1000, 1)


HANG_FIX = (
    "something it reads hangs (a network share, a server that accepts but never answers): look at what this check "
    "reads, or give it longer with --timeout"
)


def crashed(check: str, exc: BaseException) -> Finding:
    """What an unexpected exception inside a check becomes: a failure naming it, never a traceback."""
    if isinstance(exc, TimeoutError):
        return fail(check, "no result in time", HANG_FIX)
    message = str(exc).splitlines()[0][:200] if str(exc) else ""
    return fail(check, f"the check itself failed: {type(exc).__name__}{': ' + message if message else ''}", BUG_FIX)


async def guarded(check: str, work: Awaitable[list[Finding]], *, timeout_s: float) -> list[Finding]:
    """Await a check's findings within `timeout_s`; a timeout or any exception becomes one `fail` finding."""
    try:
        async with asyncio.timeout(timeout_s):
            return await work
    except TimeoutError:
        return [fail(check, f"no result within {timeout_s:g} s", HANG_FIX)]
    except Exception as exc:
        return [crashed(check, exc)]


def in_thread(function: Callable[[], T]) -> Awaitable[T]:
    """Run blocking `function` in a daemon thread: a read that hangs (a dead NFS mount) can be given up on by
    a timeout and never keeps the command from exiting (an executor's threads would be waited for)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # given up on already
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = function()
        except BaseException as exc:  # handed to the awaiting coroutine, which turns it into a finding
            error = exc
        # The loop is gone when the command finished without this result (it timed out): nothing to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="citadel-doctor-check", daemon=True).start()
    return future
