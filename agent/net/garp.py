"""Gratuitous ARP: tell a segment that addresses now live behind this interface's MAC.

When an EIP arrives on a host (bound there, or moved from another host), the machines on the external segment
may still have a neighbour entry that points at the host that had it before; they would keep sending there until
the entry expires. A gratuitous ARP request (sender and target both the EIP, broadcast) makes them update that
entry at once. It is sent through a packet socket, so the address need not be assigned to the interface (the
external namespace only answers for EIPs through proxy ARP).

The socket must be opened inside the external namespace, so `announce` runs this module there as a small
program (`nsenter --net=… python -P -m agent.net.garp DEV IP…`): a thread of the agent never changes namespace.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import sys
from collections.abc import Iterable, Sequence

from agent.net import proc

log = logging.getLogger(__name__)

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARP_REQUEST = 1
BROADCAST = b"\xff" * 6
REPEAT = 2  # two copies: one lost frame must not leave a neighbour pointing at the old host


def frame(mac: bytes, ip: str) -> bytes:
    """An Ethernet broadcast ARP request announcing `ip` at `mac` (sender = target = `ip`)."""
    if len(mac) != 6:
        raise ValueError(f"a MAC address has 6 bytes, not {len(mac)}")
    addr = ipaddress.IPv4Address(ip).packed
    ether = BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, ARP_REQUEST) + mac + addr + b"\x00" * 6 + addr
    return ether + arp


def send(dev: str, ips: Sequence[str]) -> None:
    """Broadcast a gratuitous ARP for each of `ips` out of `dev`, in the current network namespace."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as sock:
        sock.bind((dev, ETH_P_ARP))
        mac = sock.getsockname()[4]  # a packet socket's name carries the interface's hardware address
        for _ in range(REPEAT):
            for ip in ips:
                sock.send(frame(mac, ip))


def announce(netns_path: str, dev: str, ips: Iterable[str]) -> None:
    """`send` inside the namespace at `netns_path`. Best effort: neighbours relearn by themselves anyway."""
    wanted = sorted(ips)
    if not wanted:
        return
    try:
        # -P: the agent's working directory holds its state dir `agent/`, which must not shadow the package.
        proc.run(proc.in_netns(netns_path, [sys.executable, "-P", "-m", __name__, dev, *wanted]))
    except Exception as exc:  # an announcement failing must not fail the binding
        log.warning("gratuitous ARP for %s on %s failed: %s", wanted, dev, exc)
    else:
        log.info("gratuitous ARP sent for %s on %s", wanted, dev)


if __name__ == "__main__":
    send(sys.argv[1], sys.argv[2:])
