"""Fixtures for the net tests (the helpers themselves live in helpers.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import Sandbox


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    # Under /tmp (world-searchable), not pytest's 0700 tmp_path, so dnsmasq runs as nobody as on a host.
    workdir = Path(tempfile.mkdtemp(prefix="lctest-net-", dir="/tmp"))
    try:
        workdir.chmod(0o755)
        box = Sandbox(workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    try:
        yield box
    finally:
        box.close()
