"""The tiny guest image for tests: `LABCLOUD_TEST_IMAGE` if set, else built (or found) in the shared cache."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from controller.cli.home import image_cache_dir
from controller.cli.image import ensure_image


@functools.cache
def tinycloud_image() -> Path:
    """The qcow2 path; its `.json` manifest sits beside it. Built once per test session at most."""
    preset = os.environ.get("LABCLOUD_TEST_IMAGE")
    if preset:
        return Path(preset)
    cache = image_cache_dir()
    return ensure_image(cache, cache / "build.log")
