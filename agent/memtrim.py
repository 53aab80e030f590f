"""Give freed heap back to the OS while a daemon idles.

glibc keeps the memory Python freed (start-up garbage, a burst of requests) in its arenas, so a daemon's RSS
only ever grows. A background thread collects garbage and calls `malloc_trim(0)` now and then. Shared by the
agent and the controller (which imports it from here, as it does the agent's client).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import threading


def trim() -> None:
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        with contextlib.suppress(OSError, AttributeError):  # AttributeError: a libc that is not glibc
            ctypes.CDLL(libc_name).malloc_trim(0)


def start_idle_trimmer(first_after: float = 5.0, every: float = 60.0) -> threading.Event:
    """Trim `first_after` seconds from now, then every `every` seconds; set the returned event to stop."""
    stop = threading.Event()

    def loop() -> None:
        delay = first_after
        while not stop.wait(delay):
            trim()
            delay = every

    threading.Thread(target=loop, name="memtrim", daemon=True).start()
    return stop
