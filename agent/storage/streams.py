"""Writing and hashing large streams (disk copies of several GiB) at close to the speed of the disk.

Used on both ends of a backup transfer: the controller's backup store writes what an agent uploads, an agent
writes what it downloads for a restore or a volume move. Three things keep the cost near one plain copy:
  * sha256 runs in a helper thread while the caller writes or sends the same bytes (hashlib releases the GIL),
    instead of after them;
  * small pieces (an HTTP client reads 64 KiB at a time) are gathered into reused buffers, written and
    hashed a buffer at a time;
  * the kernel is told (from a helper thread) to start writing each 16 MiB stretch to disk as soon as it is
    written, so the disk works while the stream still arrives and the closing fsync only waits for the last
    stretch instead of the whole file.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

BATCH = 1024 * 1024  # bytes gathered before one write and one hashing task
WRITEBACK_STRETCH = 16 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2  # start writeback of dirty pages in the range; do not wait for it


class BackgroundSha256:
    """sha256 of a byte stream, computed in a helper thread with at most one task in flight. A piece is read
    after `update` returns: it must not change until the next `update` or `hexdigest` (which wait for it)."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        self._pending: Future[None] | None = None

    def update(self, piece: bytes | memoryview) -> None:
        self._wait()
        self._pending = self._pool.submit(self._digest.update, piece)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def hexdigest(self) -> str:
        self._wait()
        return self._digest.hexdigest()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> BackgroundSha256:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DurableFile:
    """A new file written from a stream of byte pieces, hashed as it goes, fsynced by `finish`.

    Small pieces are copied into one of two reused buffers and written a buffer at a time: one is hashed in
    the helper thread while the other fills. Holding the pieces instead would free a heap's worth of memory
    at a time, which glibc hands back to the kernel and faults in again for the next batch.
    The caller decides what to do with the file afterwards (rename it into place, or remove it); `close`
    without `finish` leaves a file that may be incomplete and is not synced.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self._digest = BackgroundSha256()
        self._buffers = (bytearray(BATCH), bytearray(BATCH))
        self._current = 0  # the buffer being filled; the other may be hashing
        self._filled = 0
        self._written_back = 0
        self._flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writeback")
        self._writeback: Future[None] | None = None

    def write(self, piece: bytes) -> None:
        if self._filled == 0 and len(piece) >= BATCH:
            self._put(piece)  # large and immutable: no need to copy it
            return
        view = memoryview(piece)
        while view:
            buffer = self._buffers[self._current]
            n = min(len(view), BATCH - self._filled)
            buffer[self._filled : self._filled + n] = view[:n]
            self._filled += n
            view = view[n:]
            if self._filled == BATCH:
                self._flush()

    def _flush(self) -> None:
        if self._filled:
            filled, self._filled = self._filled, 0
            self._put(memoryview(self._buffers[self._current])[:filled])
            self._current ^= 1  # refilled only after its hash is done: update() waits for the last task

    def _put(self, data: bytes | memoryview) -> None:
        self._digest.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self.size += len(data)
        # In a thread of its own: submitting writeback blocks while the disk is busy, and this one must not.
        # A stretch comes along with the next one when the last submission is still running.
        behind = self.size - self._written_back
        if behind >= WRITEBACK_STRETCH and (self._writeback is None or self._writeback.done()):
            self._writeback = self._flusher.submit(start_writeback, self._fd, self._written_back, behind)
            self._written_back = self.size

    def finish(self) -> str:
        """Write what is buffered, fsync, and return the sha256 of everything written."""
        self._flush()
        os.fsync(self._fd)
        return self._digest.hexdigest()

    def close(self) -> None:
        self._flusher.shutdown(wait=True)  # before the descriptor goes (and its number is reused)
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        self._digest.close()

    def __enter__(self) -> DurableFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _load_sync_file_range() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux/glibc: the closing fsync does all the work
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing `length` bytes at `offset` to disk now; returns without waiting.
    Only an optimisation: durability still comes from fsync."""
    if _sync_file_range is not None and _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE) != 0:
        log.debug("sync_file_range: %s", os.strerror(ctypes.get_errno()))
