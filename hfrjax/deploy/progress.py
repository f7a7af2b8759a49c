"""A dependency-free progress bar with images/s and ETA for the command-line tools.

On a terminal it redraws one line; otherwise (logs, CI) it prints a line every ``every_s``.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


class Progress:
    """``update(n)`` after each batch; ``close()`` prints the final line."""

    def __init__(
        self,
        total: int,
        desc: str = "embed",
        *,
        initial: int = 0,
        unit: str = "images",
        stream: TextIO | None = None,
        enabled: bool = True,
        every_s: float = 5.0,
    ):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = 0.2 if self.tty else every_s
        self.done = self.initial = int(initial)
        self.t0 = self._last = time.perf_counter()

    @property
    def rate(self) -> float:
        """Items per second in this run (resumed items excluded)."""
        return (self.done - self.initial) / max(time.perf_counter() - self.t0, 1e-9)

    def line(self) -> str:
        rate = self.rate
        left = self.total - self.done
        eta = left / rate if rate > 0 else float("inf")
        frac = self.done / self.total if self.total else 1.0
        width = 24
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        return (
            f"{self.desc} [{bar}] {self.done}/{self.total} {100 * frac:5.1f}% "
            f"{rate:.1f} {self.unit}/s ETA {_clock(eta)}"
        )

    def update(self, n: int) -> None:
        self.done += int(n)
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.every:
            self._last = now
            self._print(final=False)

    def _print(self, final: bool) -> None:
        if self.tty:
            self.stream.write("\r" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._print(final=True)
