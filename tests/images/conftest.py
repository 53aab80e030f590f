"""Fixtures for the image tests: the tinycloud image, built by its own recipe (or taken from the cache)."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "images" / "tinycloud" / "build.sh"
DEFAULT_CACHE = "/var/cache/labcloud/images"


@dataclass(frozen=True)
class BuiltImage:
    path: Path
    meta: dict[str, Any]


def build_image(cache_dir: Path) -> tuple[BuiltImage, subprocess.CompletedProcess[str]]:
    proc = subprocess.run([BUILD_SH, "--cache-dir", cache_dir], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"build.sh failed ({proc.returncode}):\n{proc.stderr}"
    path = Path(proc.stdout.splitlines()[-1])
    meta = json.loads(path.with_suffix(".json").read_text())
    return BuiltImage(path, meta), proc


@pytest.fixture(scope="session")
def image_cache() -> Path:
    return Path(os.environ.get("LABCLOUD_IMAGE_CACHE", DEFAULT_CACHE))


@pytest.fixture(scope="session")
def tinycloud(image_cache: Path) -> BuiltImage:
    """The current tinycloud image: built on first use, then reused from `LABCLOUD_IMAGE_CACHE`."""
    image, _proc = build_image(image_cache)
    return image
