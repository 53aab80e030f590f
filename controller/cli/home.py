"""Where one labcloud installation keeps its state: `LABCLOUD_HOME` (default /var/lib/labcloud).

Everything `labcloud up` starts lives under this one directory (logs, pid files, keys, the private
libvirtd), so two installations with different homes never share anything but the read-only image cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = Path("/var/lib/labcloud")
DEFAULT_IMAGE_CACHE = Path("/var/cache/labcloud/images")


def home_from_env() -> Path:
    return Path(os.environ.get("LABCLOUD_HOME") or DEFAULT_HOME).absolute()


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def from_env(cls) -> Home:
        return cls(home_from_env())

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def credentials(self) -> Path:
        return self.root / "credentials.json"

    @property
    def join_token(self) -> Path:
        return self.root / "join-token"

    @property
    def libvirt(self) -> Path:
        return self.root / "libvirt"

    @property
    def agent_state(self) -> Path:
        return self.root / "agent"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def key_file(self, key_name: str) -> Path:
        return self.keys / f"{key_name}.pem"

    def ensure(self) -> None:
        """Create the directories; o+x so qemu (running as libvirt-qemu) can reach disks below the home."""
        for directory in (self.root, self.logs, self.run, self.agent_state):
            directory.mkdir(parents=True, exist_ok=True)
        self.root.chmod(self.root.stat().st_mode | 0o711)
        self.keys.mkdir(mode=0o700, exist_ok=True)


def image_cache_dir() -> Path:
    return Path(os.environ.get("LABCLOUD_IMAGE_CACHE") or DEFAULT_IMAGE_CACHE)
