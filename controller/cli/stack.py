"""One all-in-one installation as `labcloud up` runs it: a private libvirtd, the controller and one agent.

Everything is derived from the home and the environment, the same way for `up`, `down` and `status`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agent.config import derive_host_id
from controller.cli import daemon
from controller.cli.client import ApiClient, Credentials
from controller.cli.home import Home
from controller.cli.libvirtd import PrivateLibvirtd
from controller.config import Settings

LIBVIRTD, CONTROLLER, AGENT = "libvirtd", "controller", "agent"
AGENT_LISTEN_HOST = "127.0.0.1"
AGENT_LISTEN_PORT = 8779
_WILDCARD = ("", "0.0.0.0", "::")
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


@dataclass(frozen=True)
class Stack:
    home: Home
    settings: Settings
    external_libvirt_uri: str | None

    @classmethod
    def from_env(cls, home: Home) -> Stack:
        return cls(
            home=home,
            settings=Settings(home=home.root),
            external_libvirt_uri=os.environ.get("LABCLOUD_LIBVIRT_URI") or None,
        )

    @property
    def libvirtd(self) -> PrivateLibvirtd:
        return PrivateLibvirtd(
            self.home.libvirt, self.home.pid_file(LIBVIRTD), self.home.log_file(LIBVIRTD), self.home.root
        )

    @property
    def libvirt_uri(self) -> str:
        return self.external_libvirt_uri or self.libvirtd.uri

    @property
    def controller_url(self) -> str:
        """Where this machine reaches the controller (a wildcard listen address is reached on loopback)."""
        host = self.settings.listen_host
        host = "127.0.0.1" if host in _WILDCARD else host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.settings.listen_port}"

    def daemons(self) -> list[str]:
        return [CONTROLLER, AGENT] if self.external_libvirt_uri else [LIBVIRTD, CONTROLLER, AGENT]

    def pid(self, name: str) -> int | None:
        return daemon.running_pid(self.home.pid_file(name), self.home.root)

    def local_host_id(self) -> str:
        return os.environ.get("LABCLOUD_AGENT_HOST_ID") or derive_host_id(self.agent_state_dir)

    @property
    def agent_state_dir(self) -> Path:
        return Path(os.environ.get("LABCLOUD_AGENT_STATE_DIR") or self.home.agent_state)

    def base_env(self) -> dict[str, str]:
        """The environment every daemon inherits: the caller's, plus the home marker and the sbin tools."""
        env = dict(os.environ)
        env["LABCLOUD_HOME"] = str(self.home.root)
        path = env.get("PATH", "/usr/bin:/bin").split(":")
        env["PATH"] = ":".join(path + [d for d in _SBIN if d not in path])
        return env

    # -P: the daemons run in the home, whose agent/ and controller/ directories would otherwise shadow the
    # packages of the same names (`python -m` puts the working directory first on sys.path).
    def controller_argv(self) -> list[str]:
        return [sys.executable, "-P", "-m", "controller"]

    def agent_argv(self) -> list[str]:
        return [sys.executable, "-P", "-m", "agent"]

    def controller_env(self, seed_image: Path) -> dict[str, str]:
        env = self.base_env()
        env["LABCLOUD_LISTEN_HOST"] = self.settings.listen_host
        env["LABCLOUD_LISTEN_PORT"] = str(self.settings.listen_port)
        env["LABCLOUD_SEED_IMAGE"] = str(seed_image)
        return env

    def agent_env(self, join_token: str) -> dict[str, str]:
        env = self.base_env()
        env["LABCLOUD_AGENT_CONTROLLER_URL"] = self.controller_url
        env["LABCLOUD_AGENT_JOIN_TOKEN"] = join_token
        env["LABCLOUD_AGENT_LIBVIRT_URI"] = self.libvirt_uri
        env["LABCLOUD_AGENT_STATE_DIR"] = str(self.agent_state_dir)
        env.setdefault("LABCLOUD_AGENT_LISTEN_HOST", AGENT_LISTEN_HOST)
        env.setdefault("LABCLOUD_AGENT_LISTEN_PORT", str(AGENT_LISTEN_PORT))
        return env

    def agent_listen(self) -> tuple[str, int]:
        env = self.agent_env("")
        return env["LABCLOUD_AGENT_LISTEN_HOST"], int(env["LABCLOUD_AGENT_LISTEN_PORT"])

    def controller_healthy(self) -> bool:
        try:
            response = httpx.get(self.controller_url + "/healthz", timeout=5.0, trust_env=False)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def api(self) -> ApiClient:
        return ApiClient(Credentials.load(self.home.credentials))

    def hosts(self) -> list[dict[str, Any]]:
        """The admin view of every registered hypervisor host."""
        with self.api() as client:
            doc = client.get("/v1/admin/hosts")
        return list(doc.get("hosts") or [])

    def local_host(self, hosts: list[dict[str, Any]]) -> dict[str, Any] | None:
        wanted = self.local_host_id()
        return next((h for h in hosts if h.get("id") == wanted), None)
