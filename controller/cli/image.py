"""The guest image `labcloud up` registers: built (or found in the shared cache) by images/tinycloud/build.sh.

The cache is shared by every labcloud home on the machine, so the build runs under an exclusive lock on the
cache directory; a second caller waits and then gets the cached result. The script's last stdout line is the
qcow2 path, with a `.json` manifest beside it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
from pathlib import Path

from controller.cli import daemon
from controller.cli.errors import CliError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "images" / "tinycloud" / "build.sh"
BUILD_TIMEOUT_S = 1800.0


def ensure_image(cache_dir: Path, log_file: Path, script: Path = BUILD_SCRIPT) -> Path:
    """The path of the tiny guest image, building it first if the cache has none for the current packages."""
    if not script.exists():
        raise CliError("image", f"the image recipe {script} is missing")
    cache_dir.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".build.lock", "a") as lock, open(log_file, "ab") as err:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            done = subprocess.run(
                ["bash", str(script), "--cache-dir", str(cache_dir)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise CliError(
                "image",
                f"the image build took longer than {BUILD_TIMEOUT_S:.0f} s",
                detail=daemon.tail(log_file),
            ) from None
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    if done.returncode != 0 or not lines:
        raise CliError(
            "image",
            f"the image build failed (exit {done.returncode}); log: {log_file}",
            detail=daemon.tail(log_file),
        )
    image = Path(lines[-1].strip())
    if not image.is_file():
        raise CliError("image", f"the image build printed {image}, which is not a file")
    if not image.with_suffix(".json").is_file():
        log.warning("image %s has no manifest %s beside it", image, image.with_suffix(".json"))
    return image


def seed_image_from_env() -> Path | None:
    """`LABCLOUD_SEED_IMAGE`, when the user chose an image and no build is wanted."""
    value = os.environ.get("LABCLOUD_SEED_IMAGE")
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise CliError("image", f"LABCLOUD_SEED_IMAGE={value} is not a file")
    return path
