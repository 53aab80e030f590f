"""A one-line progress bar on stderr: redrawn in place on a terminal, a line per 10 % otherwise (logs, pipes)."""

from __future__ import annotations

import sys
from typing import TextIO

MIB = 1024 * 1024
WIDTH = 30


def render(label: str, done: int, total: int | None) -> str:
    """`label [#########.....]  45.0%  450.0/1000.0 MiB`; without a total, just the bytes so far."""
    if not total:
        return f"{label} {done / MIB:.1f} MiB"
    fraction = min(1.0, done / total)
    filled = int(WIDTH * fraction)
    bar = "#" * filled + "." * (WIDTH - filled)
    return f"{label} [{bar}] {100 * fraction:5.1f}%  {done / MIB:.1f}/{total / MIB:.1f} MiB"


class ProgressBar:
    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self._tty = self.stream.isatty()
        self._last_step = -1
        self._drawn = False

    def update(self, done: int, total: int | None) -> None:
        line = render(self.label, done, total)
        if self._tty:
            self.stream.write("\r" + line)
            self._drawn = True
        else:
            step = int(10 * done / total) if total else done // (100 * MIB)
            if step == self._last_step:
                return
            self._last_step = step
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
