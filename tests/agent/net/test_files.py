"""Atomic state-file writes and the reachability check that picks dnsmasq's user."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from agent.net.files import reachable_by_others, write_atomically


def test_write_atomically_writes_only_on_change(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    assert write_atomically(path, "a\n")
    mtime = path.stat().st_mtime_ns
    assert not write_atomically(path, "a\n")
    assert path.stat().st_mtime_ns == mtime
    assert write_atomically(path, "b\n", mode=0o600)
    assert path.read_text() == "b\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["hosts"]


def test_reachable_by_others_needs_every_directory_searchable() -> None:
    # Not pytest's tmp_path: its base directory is 0700, so nothing under it is reachable by others.
    base = Path(tempfile.mkdtemp(prefix="lctest-files-", dir="/tmp"))
    try:
        inner = base / "a" / "b"
        inner.mkdir(parents=True)
        for directory in (base, base / "a", inner):
            directory.chmod(0o755)
        assert reachable_by_others(inner / "file")
        (base / "a").chmod(0o750)
        assert not reachable_by_others(inner / "file")
    finally:
        shutil.rmtree(base)
