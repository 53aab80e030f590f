"""Shared helpers for the storage tests: real qemu-img images and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MIB = 1024 * 1024


def run(*cmd: str | Path) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{cmd} failed: {proc.stderr}"
    return proc.stdout


def make_qcow2(path: Path, *, size: str = "64M", pattern: int | None = None, data_mib: int = 1) -> Path:
    """A real qcow2 image; with `pattern`, its first `data_mib` MiB hold that byte (converted from raw)."""
    if pattern is None:
        run("qemu-img", "create", "-q", "-f", "qcow2", path, size)
        return path
    raw = path.with_suffix(".raw")
    run("qemu-img", "create", "-q", "-f", "raw", raw, size)
    with raw.open("r+b") as f:
        f.write(bytes([pattern]) * (data_mib * MIB))
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path)
    raw.unlink()
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class FileServer:
    """Serves `root` over HTTP on 127.0.0.1 and counts the GETs per path."""

    root: Path
    url: str = ""
    delay: float = 0.0  # seconds before answering, to widen race windows
    gets: Counter[str] = field(default_factory=Counter)


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "served"
    root.mkdir()
    state = FileServer(root=root)
    lock = threading.Lock()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self) -> None:
            with lock:
                state.gets[self.path] += 1
            if state.delay:
                time.sleep(state.delay)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
