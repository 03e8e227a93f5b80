"""The progress bar of `citadel validate`: redrawn in place on a terminal, plain lines in a log."""

from __future__ import annotations

from typing import TextIO


class Progress:
    """A one-line bar redrawn with \\r on a terminal; elsewhere a plain line per phase and per 10%."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None, width: int = 28) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.width = width
        self.total = 1
        self.done = 0
        self.label = ""
        self._printed_tenth = -1

    def plan(self, total: int) -> None:
        self.total = max(total, 1)

    def phase(self, label: str) -> None:
        self.label = label
        if self.tty:
            self._draw()
        else:
            self._line()

    def advance(self, steps: int = 1) -> None:
        self.done = min(self.done + steps, self.total)
        if self.tty:
            self._draw()
        elif self.done * 10 // self.total > self._printed_tenth:
            self._line()

    def finish(self) -> None:
        self.done, self.label = self.total, "done"
        if self.tty:
            self._draw()
            self.stream.write("\n")
        else:
            self._line()
        self.stream.flush()

    def _fraction(self) -> float:
        return self.done / self.total

    def _draw(self) -> None:
        filled = int(self.width * self._fraction())
        bar = "#" * filled + "." * (self.width - filled)
        text = f"\r[{bar}] {self._fraction():4.0%} {self.done}/{self.total} {self.label}"
        self.stream.write(text[:120].ljust(100))
        self.stream.flush()

    def _line(self) -> None:
        self._printed_tenth = self.done * 10 // self.total
        self.stream.write(f"[validate] {self._fraction():4.0%} ({self.done}/{self.total}) {self.label}\n")
        self.stream.flush()
