"""A port as the network layer needs it: the controller's PortSpec plus the host-side facts about it."""

from __future__ import annotations

from dataclasses import dataclass

from agent.schemas import PortSpec


@dataclass(frozen=True)
class BoundPort:
    """A port on this host: `tap` is its host-side device (libvirt makes it); `hostname` is sent by DHCP."""

    port: PortSpec
    tap: str
    hostname: str
