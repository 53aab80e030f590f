"""Anti-spoofing against a real TCG guest: a guest that changes its IP or MAC, or answers ARP for another
address, gets nothing through (issue 3).

One guest in a group that allows everything within the VPC. Listeners (TCP and UDP) sit on the subnet's gateway
address inside the VPC's router namespace, the first hop every guest frame must cross the bridge to reach. Over
SSH the guest starts a background script (setsid: its own eth0 changes stall the SSH session) that sends a
tagged message after each change and puts eth0 back as it was at the end:

- `real-*` from its own IP and MAC (the control: these must arrive);
- `ip-*` from a second address of the subnet added on eth0 (picked by a route to the gateway): dropped;
- `mac-*` from its own IP after changing eth0's MAC: dropped;
- an ARP request to the gateway and an unsolicited ARP (`arping -U`) claiming the second address: the router's
  neighbour cache must not learn it (a request aimed at a Linux host would otherwise create an entry).

The last message, `done`, comes from the restored eth0; everything the listeners got until then is the oracle.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from huaweicloudsdkvpc.v2 import (
    CreateSecurityGroupRuleOption,
    CreateSecurityGroupRuleRequest,
    CreateSecurityGroupRuleRequestBody,
)

from tests.e2e import journey
from tests.support import netns, ssh
from tests.support.cloud import Cloud

pytestmark = [pytest.mark.e2e]
log = logging.getLogger(__name__)

WAIT_S = 300.0
DONE_WAIT_S = 180.0  # the script's sleeps and nc timeouts add up to about 30 s; TCG under load is slow
TCP_PORT = 9101
UDP_PORT = 9102
GATEWAY = "10.49.1.1"
SPOOFED_IP = "10.49.1.200"
SPOOFED_MAC = "52:54:00:de:ad:01"


def _router_netns(cloud: Cloud, vpc_id: str) -> str:
    """/proc/<pid>/ns/net of the VPC's router namespace, from the agent's record of the network."""
    (record,) = cloud.home.rglob(f"net/{vpc_id}/network.json")
    return f"/proc/{json.loads(record.read_text())['router']['pid']}/ns/net"


class Listeners:
    """A TCP and a UDP listener on the gateway address in the router namespace, collecting what arrives."""

    def __init__(self, router_ns: str) -> None:
        with netns.entered(router_ns):
            self.tcp = socket.create_server((GATEWAY, TCP_PORT))
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind((GATEWAY, UDP_PORT))
        self.tcp.settimeout(0.5)
        self.udp.settimeout(0.5)
        self.received: list[str] = []
        self.done = threading.Event()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._accept, self._recv)]
        for thread in self._threads:
            thread.start()

    def _note(self, data: bytes) -> None:
        # A TFTP request is binary (opcode, NUL-terminated strings): control bytes separate words.
        for word in re.split(r"[\x00-\x20]+", data.decode(errors="replace")):
            self.received.append(word)
            if word == "done":
                self.done.set()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5.0)
                chunks = []
                try:
                    while chunk := conn.recv(1024):
                        chunks.append(chunk)
                except OSError:
                    pass
                self._note(b"".join(chunks))

    def _recv(self) -> None:
        while not self._stop.is_set():
            try:
                data, _ = self.udp.recvfrom(1024)
            except TimeoutError:
                continue
            self._note(data)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.tcp.close()
        self.udp.close()


@contextmanager
def listening(router_ns: str) -> Iterator[Listeners]:
    listeners = Listeners(router_ns)
    try:
        yield listeners
    finally:
        listeners.close()


def _router_neigh(router_ns: str, ip: str) -> str:
    done = subprocess.run(
        ["nsenter", f"--net={router_ns}", "ip", "neigh", "show", ip],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def _send(tag: str, udp: bool) -> str:
    """Shell lines sending `<tag>-tcp` (busybox nc) and `<tag>-udp` (the file name of a busybox tftp read
    request) to the listeners. This busybox nc has neither -s nor -u: a foreign source address is chosen with
    a route (`_script`)."""
    tcp = f"echo {tag}-tcp | nc -w 3 {GATEWAY} {TCP_PORT}\n"
    return tcp + (f"timeout 3 tftp -g -r {tag}-udp -l /dev/null {GATEWAY} {UDP_PORT}\n" if udp else "")


def _script(mac: str, *, udp: bool, arping: bool) -> str:
    arp = (
        f"arping -c 2 -w 3 -I eth0 -s {SPOOFED_IP} {GATEWAY}\n"
        f"arping -U -c 2 -w 3 -I eth0 -s {SPOOFED_IP} {SPOOFED_IP}\n"
        if arping
        else ""
    )
    return (
        "sleep 1\n"
        + _send("real", udp)
        + f"ip addr add {SPOOFED_IP}/24 dev eth0\n"
        + f"ip route add {GATEWAY}/32 dev eth0 src {SPOOFED_IP}\n"  # only the listeners' traffic uses it
        + _send("ip", udp)
        + arp
        + f"ip route del {GATEWAY}/32 dev eth0\n"
        + f"ip addr del {SPOOFED_IP}/24 dev eth0\n"
        + f"ip link set eth0 address {SPOOFED_MAC}\n"
        + "sleep 1\n"
        + _send("mac", udp)
        + f"ip link set eth0 address {mac}\n"
        + "sleep 2\n"
        + f"for i in 1 2 3 4 5; do echo done | nc -w 3 {GATEWAY} {TCP_PORT} && break; sleep 2; done\n"
    )


def test_a_spoofing_guest_gets_nothing_through(cloud: Cloud, keypair: tuple[str, Path]) -> None:
    ecs, vpc = cloud.ecs(), cloud.vpc()
    public_key, key_path = keypair
    journey.import_keypair(ecs, "spoofkey", public_key)
    vpc_id, subnet_id, sg_id = journey.create_network(
        vpc, name="spoof", cidr="10.49.0.0/16", subnet_cidr="10.49.1.0/24", gateway=GATEWAY
    )
    vpc.create_security_group_rule(  # all ingress from the VPC (egress is open by default)
        CreateSecurityGroupRuleRequest(
            body=CreateSecurityGroupRuleRequestBody(
                security_group_rule=CreateSecurityGroupRuleOption(
                    security_group_id=sg_id,
                    direction="ingress",
                    ethertype="IPv4",
                    remote_ip_prefix="10.49.0.0/16",
                )
            )
        )
    )
    ((server_id, ip),) = journey.boot_small_servers(
        ecs,
        cloud.ims(),
        name="spoof",
        network=(vpc_id, subnet_id, sg_id),
        key_name="spoofkey",
        timeout=WAIT_S,
    )
    probe = "cat /sys/class/net/eth0/address; command -v arping || echo no-arping; command -v tftp || echo no-tftp"
    tools = ssh.wait_and_run(cloud.ns, ip, key_path, probe)
    mac = tools.split()[0]
    with_arping = "no-arping" not in tools
    with_udp = "no-tftp" not in tools
    log.info("guest %s (%s): %s", ip, mac, tools.replace("\n", " | "))

    router_ns = _router_netns(cloud, vpc_id)
    assert "lladdr" not in _router_neigh(router_ns, SPOOFED_IP)
    with listening(router_ns) as listeners:
        script = _script(mac, udp=with_udp, arping=with_arping)
        ssh.wait_and_run(
            cloud.ns,
            ip,
            key_path,
            f"cat > /tmp/spoof.sh <<'EOF'\n{script}EOF\nsetsid sh /tmp/spoof.sh >/tmp/spoof.log 2>&1 </dev/null &",
        )
        assert listeners.done.wait(DONE_WAIT_S), f"no 'done' from the guest; got {listeners.received}"
        got = set(listeners.received)
    log.info("the listeners got: %s", sorted(got))
    # The control: the guest's own address and MAC get through.
    assert {"real-tcp", "done"} | ({"real-udp"} if with_udp else set()) <= got, got
    assert not {w for w in got if w.startswith(("ip-", "mac-"))}, got  # nothing from a foreign IP or MAC
    log.info(
        "guest script output: %s", ssh.wait_and_run(cloud.ns, ip, key_path, "cat /tmp/spoof.log", timeout=60)
    )
    # The script put eth0 back as it was.
    eth0 = ssh.wait_and_run(cloud.ns, ip, key_path, "ip -o addr show eth0; cat /sys/class/net/eth0/address")
    assert SPOOFED_IP not in eth0 and mac in eth0, eth0
    if with_arping:
        assert "lladdr" not in _router_neigh(router_ns, SPOOFED_IP)
        assert mac in _router_neigh(router_ns, ip)  # the router does learn the guest's real address
    else:
        log.warning("ARP spoofing not tried: the guest image has no arping")
    if not with_udp:
        log.warning("UDP not tried: the guest image has no tftp client to send a datagram with")

    job = journey.wait_job(ecs, journey.delete(ecs, [server_id]), timeout=WAIT_S)
    assert job.status == "SUCCESS", (job.error_code, job.fail_reason)
