"""Elastic IPs for real: a two-host lab whose fabric is the external network, real TCG guests, the lab's
"external" namespace (10.254.0.1, the LAN / internet) as the client and the listener.

    VPC 10.42.0.0/16, subnet 10.42.1.0/24
      g1 on h1, group "open" (tcp 22 and 5000 from anywhere), created with `publicip.eip` (a new EIP)
      g2 on h2, group "inner" (tcp 22 from the VPC only, 5000 from anywhere), no EIP

Every "works" is a TCP connection that carried data; every "blocked" is a measured connect timeout, next to a
control that shows the path itself is up. Oracles besides the packets: `iptables-save -t nat` in the VPC's router
namespaces, the external namespace's neighbour entry for the EIP, the EIP and server views of the API.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkecs.v2 import (
    CreateServersRequest,
    CreateServersRequestBody,
    DeleteServersRequest,
    DeleteServersRequestBody,
    PrePaidServer,
    PrePaidServerEip,
    PrePaidServerEipBandwidth,
    PrePaidServerNic,
    PrePaidServerPublicip,
    PrePaidServerRootVolume,
    PrePaidServerSecurityGroup,
    ServerId,
)
from huaweicloudsdkeip.v2 import (
    ListPublicipsRequest,
    ShowPublicipRequest,
    UpdatePublicipOption,
    UpdatePublicipRequest,
    UpdatePublicipsRequestBody,
)
from huaweicloudsdkvpc.v2 import (
    CreateSecurityGroupOption,
    CreateSecurityGroupRequest,
    CreateSecurityGroupRequestBody,
    CreateSecurityGroupRuleOption,
    CreateSecurityGroupRuleRequest,
    CreateSecurityGroupRuleRequestBody,
)

from controller.cli.client import ApiClient, Credentials
from controller.cli.lab_plan import EXTERNAL_ADDR
from tests.e2e import journey
from tests.support import ssh
from tests.support.lab import Lab
from tests.support.netns import entered

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

VPC_CIDR = "10.42.0.0/16"
WHOAMI_PORT = 7000  # in the external namespace: answers with the peer address it sees
APP_PORT = 5000  # in a guest: a one-shot busybox nc listener
SSH_WAIT_S = 420.0
BLOCKED_PROBE_S = 3.0
# A blocked connection: no answer at all, or (once the client's ARP for an address nobody answers for gave up)
# "no route to host". Never "refused": that would mean something answered.
UNREACHED = ("timeout", "error: [Errno 113] No route to host")

_WHOAMI = (
    "import socket, sys\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(16)\n"
    "while True:\n"
    "    c, peer = s.accept(); c.sendall(f'{peer[0]}\\n'.encode()); c.close()\n"
)


@pytest.fixture
def whoami(lab: Lab) -> Iterator[None]:
    """A listener in the external namespace that tells every client the source address it arrived with."""
    listener = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns("ext"), sys.executable, "-c", _WHOAMI, str(WHOAMI_PORT)]
    )
    try:
        _eventually(lambda: _connect(lab.ns("ext"), "127.0.0.1", WHOAMI_PORT, 1.0) == "ok", "the listener")
        yield
    finally:
        listener.kill()
        listener.wait(timeout=30)


def _connect(ns: str, ip: str, port: int, timeout: float, payload: bytes | None = None) -> str:
    """One TCP connection from `ns`: "ok" (after sending `payload`), "timeout", or the error."""
    with entered(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((ip, port))
        if payload is not None:
            sock.sendall(payload)
        return "ok"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error: {exc}"
    finally:
        sock.close()


def _eventually(
    check: Callable[[], bool], what: str, timeout: float = 120.0, explain: Callable[[], str] | None = None
) -> float:
    """Poll until `check` holds; returns how long it took. `explain` adds what the failure message shows."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out waiting for {what}" + (f"\n{explain()}" if explain else ""))
        time.sleep(0.1)
    return time.monotonic() - started


class Guest:
    """A booted guest reached over SSH from `via` (a namespace name or a router's /proc/<pid>/ns/net)."""

    def __init__(self, name: str, ip: str, via: str, key: Path) -> None:
        self.name, self.ip, self.via, self.key = name, ip, via, key

    def run(self, command: str) -> ssh.Result:
        client = ssh.wait_for_ssh(self.via, self.ip, self.key, timeout=SSH_WAIT_S)
        try:
            return ssh.run(client, command)
        finally:
            client.close()

    def whoami(self) -> str:
        """The source address the external listener sees for this guest ("" when nc could not connect)."""
        done = self.run(f"nc -w 5 {EXTERNAL_ADDR} {WHOAMI_PORT} </dev/null; echo rc=$?")
        lines = done.stdout.strip().splitlines()
        return lines[0] if len(lines) == 2 and lines[-1] == "rc=0" else ""

    def listen(self, port: int) -> None:
        done = self.run(f"rm -f /tmp/got; (nc -l -p {port} > /tmp/got 2>/dev/null </dev/null &); echo ok")
        assert done.stdout.strip() == "ok", done

    def received(self) -> str:
        return self.run("cat /tmp/got 2>/dev/null || true").stdout.strip()


def _security_group(vpc: Any, vpc_id: str, name: str, rules: list[tuple[int, str]]) -> str:
    option = CreateSecurityGroupOption(name=name, vpc_id=vpc_id)
    sg_id = str(
        vpc.create_security_group(
            CreateSecurityGroupRequest(body=CreateSecurityGroupRequestBody(security_group=option))
        ).security_group.id
    )
    for port, prefix in rules:
        rule = CreateSecurityGroupRuleOption(
            security_group_id=sg_id,
            direction="ingress",
            ethertype="IPv4",
            protocol="tcp",
            port_range_min=port,
            port_range_max=port,
            remote_ip_prefix=prefix,
        )
        vpc.create_security_group_rule(
            CreateSecurityGroupRuleRequest(body=CreateSecurityGroupRuleRequestBody(security_group_rule=rule))
        )
    return sg_id


def _create(
    ecs: Any, name: str, zone: str, net: tuple[str, str], sg_id: str, refs: dict[str, str], **extra: Any
) -> str:
    vpc_id, subnet_id = net
    server = PrePaidServer(
        image_ref=refs["image"],
        flavor_ref=refs["flavor"],
        name=name,
        vpcid=vpc_id,
        nics=[PrePaidServerNic(subnet_id=subnet_id)],
        root_volume=PrePaidServerRootVolume(volumetype="SATA"),
        security_groups=[PrePaidServerSecurityGroup(id=sg_id)],
        key_name="eip-key",
        availability_zone=zone,
        **extra,
    )
    return str(ecs.create_servers(CreateServersRequest(body=CreateServersRequestBody(server=server))).job_id)


def _bind(eip: Any, eip_id: str, port_id: str | None) -> Any:
    body = UpdatePublicipsRequestBody(publicip=UpdatePublicipOption(port_id=port_id or ""))
    return eip.update_publicip(UpdatePublicipRequest(publicip_id=eip_id, body=body)).publicip


def _nat(lab: Lab, member: str, vpc_id: str) -> list[str]:
    """The `-A` lines of `iptables-save -t nat` in the VPC's router namespace on a host."""
    out = subprocess.run(
        ["nsenter", f"--net={lab.router_netns(member, vpc_id)}", "iptables-save", "-t", "nat"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line for line in out.splitlines() if line.startswith("-A ")]


def _external_mac(lab: Lab, member: str) -> str:
    """The MAC of the macvlan through which a host's external namespace sits on the external network."""
    holder = json.loads((lab.agent_state(member) / "net" / "external.json").read_text())["holder"]
    out = subprocess.run(
        ["nsenter", f"--net=/proc/{holder['pid']}/ns/net", "ip", "-j", "link", "show", "ext0"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return str(json.loads(out)[0]["address"])


def _external_view(lab: Lab, ip: str) -> str:
    """What a failed EIP check needs: the external side's neighbours, each host's proxy entries and EIP log."""
    lines = ["ext neighbours: " + lab.sh("ext", "ip", "neigh", "show").strip()]
    for member in ("h1", "h2"):
        holder = json.loads((lab.agent_state(member) / "net" / "external.json").read_text())["holder"]
        proxies = subprocess.run(
            ["nsenter", f"--net=/proc/{holder['pid']}/ns/net", "ip", "neigh", "show", "proxy"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        log_file = lab.agent_state(member).parent / "logs" / "agent.log"
        related = [line for line in log_file.read_text().splitlines() if "external" in line or ip in line]
        lines += [f"{member} proxies: {proxies}", f"{member} log:", *related[-15:]]
    return "\n".join(lines)


def _neighbour(lab: Lab, ip: str) -> str | None:
    entries = lab.ip_json("ext", "neigh", "show", ip)
    return entries[0].get("lladdr") if entries else None


def _set_shared_snat(lab: Lab, vpc_id: str, enabled: bool) -> None:
    """`enable_shared_snat` is a labcloud field the VPC SDK does not model: a signed raw PUT."""
    creds = Credentials.load(lab.root / "controller" / "credentials.json")
    with lab.entered(), ApiClient(creds) as client:
        done = client.put(f"/v1/{creds.project_id}/vpcs/{vpc_id}", {"vpc": {"enable_shared_snat": enabled}})
    assert done["vpc"]["enable_shared_snat"] is enabled


def test_eips_in_the_lab(lab: Lab, keypair: tuple[str, Path], whoami: None) -> None:
    public_key, key = keypair
    ecs, vpc, eip = lab.ecs(), lab.vpc(), lab.eip()
    ext = lab.ns("ext")
    h2_external = lab.lab.member("h2").external_ip
    with lab.entered():
        journey.import_keypair(ecs, "eip-key", public_key)
        vpc_id, subnet_id, _ = journey.create_network(
            vpc, name="eipnet", cidr=VPC_CIDR, subnet_cidr="10.42.1.0/24", gateway="10.42.1.1"
        )
        open_sg = _security_group(vpc, vpc_id, "open", [(22, "0.0.0.0/0"), (APP_PORT, "0.0.0.0/0")])
        inner_sg = _security_group(vpc, vpc_id, "inner", [(22, VPC_CIDR), (APP_PORT, "0.0.0.0/0")])
        refs = {"image": journey.small_image_id(lab.ims()), "flavor": journey.smallest_flavor_id(ecs)}
        new_eip = PrePaidServerPublicip(
            eip=PrePaidServerEip(
                iptype="5_bgp", bandwidth=PrePaidServerEipBandwidth(size=10, sharetype="PER")
            )
        )
        net = (vpc_id, subnet_id)
        jobs = {
            "g1": _create(ecs, "g1", "lab-1a", net, open_sg, refs, publicip=new_eip),
            "g2": _create(ecs, "g2", "lab-1b", net, inner_sg, refs),
        }
        servers: dict[str, Any] = {}
        for name, job_id in jobs.items():
            job = journey.wait_job(ecs, job_id, timeout=900)
            assert job.status == "SUCCESS", job
            servers[name] = journey.show(ecs, job.entities.sub_jobs[0].entities.server_id)
        (allocated,) = eip.list_publicips(ListPublicipsRequest()).publicips
    assert {n: s.os_ext_srv_att_rhost for n, s in servers.items()} == {"g1": "h1", "g2": "h2"}
    address = allocated.public_ip_address
    ips = {name: journey.fixed_ip(s) for name, s in servers.items()}
    floating = [
        a for group in servers["g1"].addresses.values() for a in group if a.os_ext_ip_stype == "floating"
    ]
    assert [(a.addr, a.os_ext_ip_sport_id) for a in floating] == [(address, allocated.port_id)]
    assert (allocated.status, allocated.private_ip_address) == ("ACTIVE", ips["g1"])
    g1 = Guest("g1", ips["g1"], lab.router_netns("h1", vpc_id), key)
    g2 = Guest("g2", ips["g2"], lab.router_netns("h2", vpc_id), key)

    # The external network reaches g1 on its EIP: SSH from the "internet".
    assert ssh.wait_and_run(ext, address, key, "hostname", timeout=SSH_WAIT_S).strip() == "g1"
    # Outbound, g1 leaves with its EIP; g2 (no EIP) with h2's own external address (shared SNAT).
    assert g1.whoami() == address
    assert g2.whoami() == h2_external
    nat_h1, nat_h2 = _nat(lab, "h1", vpc_id), _nat(lab, "h2", vpc_id)
    assert f"-A PREROUTING -d {address}/32 -i ex0 -j DNAT --to-destination {ips['g1']}" in nat_h1
    assert f"-A POSTROUTING -s {ips['g1']}/32 -o ex0 -j SNAT --to-source {address}" in nat_h1
    assert (
        [line for line in nat_h2 if "SNAT" in line]
        == [line for line in nat_h2 if line.startswith("-A POSTROUTING -o ex0 -j SNAT --to-source 169.254.")]
        != []
    )

    # Shared SNAT off for the VPC: g2 no longer gets out (nc gives up), g1 still does with its EIP.
    _set_shared_snat(lab, vpc_id, False)
    _eventually(lambda: not any("SNAT" in line for line in _nat(lab, "h2", vpc_id)), "h2's SNAT rule to go")
    assert g2.whoami() == ""
    assert g1.whoami() == address  # the control: the external side and the listener are fine
    _set_shared_snat(lab, vpc_id, True)

    # Unbind: the EIP stops answering (a connect timeout, probed from the API's answer on), an SSH session held
    # open across it ends (its conntrack entries are flushed), and the guest lives on.
    assert _connect(ext, address, 22, BLOCKED_PROBE_S) == "ok"
    held = ssh.connect(ext, address, key)
    try:
        assert ssh.run(held, "hostname").stdout.strip() == "g1"
        with lab.entered():
            assert _bind(eip, allocated.id, None).status == "DOWN"
        answered = time.monotonic()
        while True:
            probe_started = time.monotonic() - answered
            if _connect(ext, address, 22, 0.5) != "ok":
                break
            assert probe_started < 120.0, "the EIP still answers two minutes after the unbind"
        print(f"EIP {address} unbound: the first SSH connect to time out began {probe_started:.2f} s after")
        assert _connect(ext, address, 22, BLOCKED_PROBE_S) in UNREACHED
        with pytest.raises((OSError, paramiko.SSHException, EOFError)):
            ssh.run(held, "hostname", timeout=BLOCKED_PROBE_S)
    finally:
        held.close()
    assert g1.run("hostname").stdout.strip() == "g1"  # the control: g1 itself is up
    assert address not in " ".join(_nat(lab, "h1", vpc_id))

    # Re-bound to g2 on the other host: the external side learns the new place at once (gratuitous ARP), the
    # port g2's group opens works through the EIP, and SSH (open only inside the VPC) does not.
    g2.listen(APP_PORT)
    with lab.entered():
        port_g2 = servers["g2"].addresses[vpc_id][0].os_ext_ip_sport_id
        assert _bind(eip, allocated.id, port_g2).status == "ACTIVE"
    h2_mac = _external_mac(lab, "h2")
    moved_after = _eventually(
        lambda: _neighbour(lab, address) == h2_mac,
        f"the external side to learn h2's MAC {h2_mac}",
        explain=lambda: _external_view(lab, address),
    )
    print(
        f"EIP {address} moved to h2: the external namespace's neighbour entry followed in {moved_after:.2f} s"
    )
    reached_after = _eventually(
        lambda: _connect(ext, address, APP_PORT, 1.0, b"hello-via-eip\n") == "ok", "the EIP to reach g2"
    )
    print(f"EIP {address} on h2 reached {reached_after:.2f} s after the neighbour update")
    _eventually(lambda: g2.received() == "hello-via-eip", "g2 to receive the message")
    assert _connect(ext, address, 22, BLOCKED_PROBE_S) == "timeout"  # g2's group: SSH from the VPC only
    assert g2.run("hostname").stdout.strip() == "g2"  # ... and from inside the VPC it works
    assert g2.whoami() == address  # g2 now leaves with the EIP

    # Deleting g2 with delete_publicip releases the EIP; g1 goes without.
    with lab.entered():
        for name, release in (("g2", True), ("g1", False)):
            body = DeleteServersRequestBody(servers=[ServerId(id=servers[name].id)], delete_publicip=release)
            job = journey.wait_job(
                ecs, ecs.delete_servers(DeleteServersRequest(body=body)).job_id, timeout=600
            )
            assert job.status == "SUCCESS", job
        assert eip.list_publicips(ListPublicipsRequest()).publicips == []
        with pytest.raises(ClientRequestException) as info:
            eip.show_publicip(ShowPublicipRequest(publicip_id=allocated.id))
        assert info.value.status_code == 404
