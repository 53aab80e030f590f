"""Typed agent errors. Each carries a stable code and an HTTP status; the agent app maps them in one handler."""

from __future__ import annotations


class AgentFailure(Exception):
    """Base class: something the agent could not do, with a code the controller can act on."""

    code = "Agent.0000"
    status = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotFound(AgentFailure):
    code = "Agent.0404"
    status = 404


class Conflict(AgentFailure):
    code = "Agent.0409"
    status = 409


class VirtError(AgentFailure):
    """libvirt or QEMU refused or failed."""

    code = "Agent.0100"


class StorageError(AgentFailure):
    """qemu-img, the image cache or the seed builder failed."""

    code = "Agent.0200"


class NetworkError(AgentFailure):
    """Bridges, namespaces, dnsmasq or iptables failed."""

    code = "Agent.0300"
