"""A dependency-free progress bar for long work (hashing, copying).

Draws on stderr when it is a terminal, else prints a line every few seconds, and
is thread-safe: workers call ``advance(n)`` from any thread.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    def __init__(self, label: str, total: int, *, stream: TextIO | None = None, enabled: bool = True):
        self.label, self.total, self.done = label, max(total, 0), 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last = self._start

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            interval = 0.1 if self.tty else 5.0
            if self.enabled and now - self._last >= interval:
                self._last = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        frac = self.done / self.total if self.total else 1.0
        rate = self.done / elapsed
        if self.tty:
            width = 30
            bar = "#" * int(frac * width)
            self.stream.write(
                f"\r{self.label} [{bar:<{width}}] {frac:6.1%} {_human(self.done)}/{_human(self.total)} "
                f"{_human(rate)}/s "
            )
        else:
            self.stream.write(f"{self.label}: {frac:.0%} {_human(self.done)}/{_human(self.total)} {_human(rate)}/s\n")
        self.stream.flush()

    def close(self) -> float:
        """Finish the bar; returns elapsed seconds."""
        now = time.monotonic()
        if self.enabled:
            with self._lock:
                self._draw(now)
                if self.tty:
                    self.stream.write("\n")
                    self.stream.flush()
        return now - self._start
