"""Self-repair in a running agent: firewall state changed behind labcloud's back comes back by itself.

One TCG guest in a `labcloud up`. With SSH working, four changes are made in the cloud's namespace with the
kernel's own tools, as an admin (or another program) might:

1. the guest's group ingress chain (`lcgi-<group>`) is flushed: SSH to the guest is then dropped (measured);
2. an ACCEPT rule is slipped into the guest's port chain (`lci-<port>`);
3. the guest's address is deleted from its group's ipset (`lcg-<group>`, the group names itself as remote group);
4. the guest's anti-spoofing chain in the nft table `lc-antispoof` is flushed (the guest could spoof).

Nothing calls the agent: only its housekeeping loop (every 30 s, trusting what it wrote for 20 s) can put the
state back. `iptables-save`, `ipset save` and `nft list table` are the oracles, compared with what they printed
before the tampering; SSH works again afterwards. The delay is logged (the issue asks for 60 s; the test only
insists on "eventually", within a generous bound).
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest

from tests.e2e import journey
from tests.support import netns, ssh
from tests.support.cloud import Cloud

pytestmark = [pytest.mark.e2e]
log = logging.getLogger(__name__)

WAIT_S = 300.0
REPAIR_WAIT_S = 240.0  # generous: two housekeeping ticks are 60 s; the figure that matters is logged


def _in_ns(cloud: Cloud, *argv: str) -> str:
    return netns.run_in(cloud.ns, list(argv)).stdout


def _firewall_lines(cloud: Cloud) -> set[str]:
    """labcloud's iptables rules (filter table), as `iptables-save` prints them."""
    lines = _in_ns(cloud, "iptables-save", "-t", "filter").splitlines()
    return {line for line in lines if line.startswith("-A lc")}


def _ipsets(cloud: Cloud) -> set[str]:
    """labcloud's group sets and their members (a set swapped in anew gets another `initval`: not compared)."""
    lines = _in_ns(cloud, "ipset", "save").splitlines()
    return {
        " ".join(line.split()[:3])
        for line in lines
        if line.split()[1:2] and line.split()[1].startswith("lcg-")
    }


def _antispoof(cloud: Cloud) -> list[str]:
    listing = netns.run_in(cloud.ns, ["nft", "list", "table", "bridge", "lc-antispoof"], check=False)
    return sorted(line.strip() for line in listing.stdout.splitlines() if line.strip())


def _state(cloud: Cloud) -> tuple[set[str], set[str], list[str]]:
    return _firewall_lines(cloud), _ipsets(cloud), _antispoof(cloud)


def _ssh_port(cloud: Cloud, ip: str, timeout_s: float) -> str:
    """One new TCP connection to port 22 from the cloud's namespace: 'ok', 'refused' or 'timeout'."""
    with netns.entered(cloud.ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect((ip, 22))
        return "ok"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    finally:
        sock.close()


def _chain(lines: set[str], prefix: str) -> str:
    (chain,) = {line.split()[1] for line in lines if line.split()[1].startswith(prefix)}
    return chain


def test_firewall_tampered_behind_a_running_agents_back_is_repaired(
    cloud: Cloud, keypair: tuple[str, Path]
) -> None:
    ecs, vpc = cloud.ecs(), cloud.vpc()
    public_key, key_path = keypair
    journey.import_keypair(ecs, "repairkey", public_key)
    network = journey.create_network(
        vpc, name="repair", cidr="10.49.0.0/16", subnet_cidr="10.49.1.0/24", gateway="10.49.1.1"
    )
    ((server_id, ip),) = journey.boot_small_servers(
        ecs, cloud.ims(), name="repair", network=network, key_name="repairkey", timeout=WAIT_S
    )
    assert ssh.wait_and_run(cloud.ns, ip, key_path, "echo up").strip() == "up"
    rules, sets, table = before = _state(cloud)
    group_in, port_in = _chain(rules, "lcgi-"), _chain(rules, "lci-")
    (group_set,) = {line.split()[1] for line in sets if line.startswith("create ")}
    assert f"add {group_set} {ip}" in sets  # the group's own rule names it: the guest is a member
    port_chain = next(line.split()[1] for line in table if line.startswith("chain port-"))

    # Behind the agent's back, with the kernel's own tools.
    _in_ns(cloud, "iptables", "-F", group_in)
    _in_ns(cloud, "iptables", "-I", port_in, "1", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT")
    _in_ns(cloud, "ipset", "del", group_set, ip)
    _in_ns(cloud, "nft", "flush", "chain", "bridge", "lc-antispoof", port_chain)
    tampered = time.monotonic()
    assert _state(cloud) != before
    assert _ssh_port(cloud, ip, 3.0) == "timeout"  # the group's SSH rule is gone: dropped, not refused

    while (now := _state(cloud)) != before:
        waited = time.monotonic() - tampered
        assert waited < REPAIR_WAIT_S, f"not repaired after {waited:.0f} s: {now} != {before}"
        time.sleep(1.0)
    delay = time.monotonic() - tampered
    log.info("firewall tampering repaired by the housekeeping after %.1f s", delay)
    assert _ssh_port(cloud, ip, 10.0) == "ok"
    assert ssh.wait_and_run(cloud.ns, ip, key_path, "echo back", timeout=60).strip() == "back"

    job = journey.wait_job(ecs, journey.delete(ecs, [server_id]), timeout=WAIT_S)
    assert job.status == "SUCCESS", (job.error_code, job.fail_reason)
    assert _firewall_lines(cloud) & {line for line in rules if port_in in line} == set()
