from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.errors import StorageError
from agent.storage.layout import (
    ensure_instance_dir,
    ensure_traversable_dir,
    image_cache_dir,
    instance_paths,
    remove_instance_dir,
)


def test_instance_paths_layout(tmp_path: Path) -> None:
    paths = instance_paths(tmp_path, "srv-1")
    assert paths.dir == tmp_path / "instances" / "srv-1"
    assert paths.root_disk == paths.dir / "root.qcow2"
    assert paths.seed == paths.dir / "seed.iso"
    assert paths.console_log == paths.dir / "console.log"
    assert not paths.dir.exists()  # pure
    assert image_cache_dir(tmp_path) == tmp_path / "images"


@pytest.mark.parametrize("bad", ["", "..", "../x", "a/b", ".hidden", "a..b", "x" * 200, "a b"])
def test_instance_paths_rejects_ids_that_escape(tmp_path: Path, bad: str) -> None:
    with pytest.raises(StorageError):
        instance_paths(tmp_path, bad)


def test_dirs_are_traversable_by_others_even_under_a_strict_umask(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old = os.umask(0o077)
    try:
        paths = ensure_instance_dir(state, "srv-1")
        cache = ensure_traversable_dir(image_cache_dir(state))
    finally:
        os.umask(old)
    for directory in (state, state / "instances", paths.dir, cache):
        assert stat.S_IMODE(directory.stat().st_mode) & 0o001, directory
    assert ensure_instance_dir(state, "srv-1") == paths  # idempotent


def test_remove_instance_dir(tmp_path: Path) -> None:
    paths = ensure_instance_dir(tmp_path, "srv-1")
    paths.seed.write_bytes(b"x")
    remove_instance_dir(paths)
    assert not paths.dir.exists()
    remove_instance_dir(paths)  # already gone is fine
