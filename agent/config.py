"""Agent settings, read from `LABCLOUD_AGENT_*` environment variables."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

HOST_ID_FILE = "host-id"
_WILDCARD_HOSTS = {"", "0.0.0.0", "::"}


def _default_state_dir() -> Path:
    return Path(os.environ.get("LABCLOUD_HOME", "/var/lib/labcloud")) / "agent"


def derive_host_id(state_dir: Path) -> str:
    """A stable id for this agent: the one saved in the state dir, else one derived from hostname + state dir.

    Deriving from the state dir as well lets several simulated hosts share one machine's hostname.
    """
    saved = state_dir / HOST_ID_FILE
    try:
        value = saved.read_text().strip()
    except FileNotFoundError:
        value = ""
    if value:
        return value
    digest = hashlib.sha256(f"{socket.gethostname()}:{state_dir.resolve()}".encode()).hexdigest()
    return f"host-{digest[:16]}"


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LABCLOUD_AGENT_", extra="ignore")

    state_dir: Path = Field(default_factory=_default_state_dir)
    listen_host: str = "127.0.0.1"
    listen_port: int = 8779
    public_url: str | None = None  # how the controller reaches this agent; derived from listen_* when unset
    controller_url: str | None = None  # no registration or heartbeat when unset
    join_token: SecretStr
    host_id: str | None = None  # stable default derived and saved in state_dir
    libvirt_uri: str = "qemu:///system"
    accelerator: Literal["auto", "kvm", "tcg"] = "auto"
    availability_zone: str = "lab-1a"
    network_driver: Literal["linux", "null"] = "linux"
    # This host's VTEP address for VPC overlays (VXLAN); unset: the address it reaches the controller from,
    # unless that is loopback (all-in-one: no overlay).
    underlay_ip: str | None = None
    # The external network (EIPs, shared SNAT): a device of this namespace on the external segment (it gets a
    # macvlan child in the host's external namespace), this host's address there (CIDR) and the gateway.
    # Unset: no external network on this host.
    external_dev: str | None = None
    external_ip: str | None = None
    external_gateway: str | None = None
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    # How long a soft stop or soft reboot waits for the guest to react to the ACPI button before forcing it.
    acpi_timeout_seconds: float = Field(default=60.0, gt=0)
    # A VPC's bridge, router and dnsmasq stay this long after its last port on this host goes, so the next
    # server in that VPC is wired without building them again.
    network_idle_seconds: float = Field(default=600.0, ge=0)
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _fill_defaults(self) -> AgentSettings:
        if self.public_url is None:
            host = socket.gethostname() if self.listen_host in _WILDCARD_HOSTS else self.listen_host
            if ":" in host:
                host = f"[{host}]"
            self.public_url = f"http://{host}:{self.listen_port}"
        if self.host_id is None:
            self.host_id = derive_host_id(self.state_dir)
        return self

    @property
    def url(self) -> str:
        assert self.public_url is not None  # filled by the validator
        return self.public_url

    @property
    def resolved_host_id(self) -> str:
        assert self.host_id is not None  # filled by the validator
        return self.host_id

    def persist_host_id(self) -> None:
        """Save the host id so it survives a change of hostname; called once the state dir is in use."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / HOST_ID_FILE
        if path.exists() and path.read_text().strip() == self.host_id:
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{self.host_id}\n")
        os.replace(tmp, path)
        log.info("host id %s saved in %s", self.host_id, path)
