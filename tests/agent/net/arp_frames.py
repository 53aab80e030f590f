"""Raw ARP frames for the anti-spoofing tests: a sender (run inside a guest namespace) and a sniffer process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from dataclasses import dataclass

ETH_P_ARP = 0x0806
BROADCAST = "ff:ff:ff:ff:ff:ff"
REQUEST, REPLY = 1, 2


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def arp_frame(
    *, eth_src: str, eth_dst: str, op: int, sender_mac: str, sender_ip: str, target_ip: str
) -> bytes:
    target_mac = "00:00:00:00:00:00" if op == REQUEST else eth_dst
    return (
        _mac(eth_dst)
        + _mac(eth_src)
        + ETH_P_ARP.to_bytes(2, "big")
        + bytes.fromhex("0001 0800 06 04".replace(" ", ""))
        + op.to_bytes(2, "big")
        + _mac(sender_mac)
        + socket.inet_aton(sender_ip)
        + _mac(target_mac)
        + socket.inet_aton(target_ip)
    )


def send_frames(device: str, frames: list[bytes]) -> None:
    """Send raw frames out of `device` (call it inside the guest's namespace)."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((device, 0))
        for frame in frames:
            sock.send(frame)


@dataclass(frozen=True)
class SeenArp:
    op: int
    sender_mac: str
    sender_ip: str


_SNIFFER = r"""
import json, socket, sys, time
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
sock.bind(("eth0", 0))
sock.settimeout(0.2)
print("ready", flush=True)
sys.stdin.readline()  # the test says when to stop
seen = []
while True:
    try:
        data = sock.recv(2048)
    except (TimeoutError, socket.timeout):
        break
    seen.append([int.from_bytes(data[20:22], "big"), data[22:28].hex(":"), socket.inet_ntoa(data[28:32])])
print(json.dumps(seen), flush=True)
"""


class Sniffer:
    """Records every ARP frame arriving on eth0 of a namespace, from start until `stop`."""

    def __init__(self, ns: str) -> None:
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _SNIFFER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        assert self._proc.stdout.readline().strip() == "ready"

    def stop(self) -> list[SeenArp]:
        """The frames seen (the socket's queue is drained until it has been quiet for 0.2 s)."""
        out, _ = self._proc.communicate("stop\n", timeout=60)
        return [SeenArp(op, mac, ip) for op, mac, ip in json.loads(out.splitlines()[-1])]

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
