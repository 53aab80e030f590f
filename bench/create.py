"""Create → ACTIVE and create → SSH-ready through labcloud, against raw libvirt doing the same work.

Runs a namespace-contained cloud (`labcloud up` in a fresh network namespace), then, in the same process and on
the same private libvirtd:
  * labcloud: N one-at-a-time creates with the official Huawei SDK; time from the create call to status ACTIVE
    (polled every 20 ms) and to the first SSH login (polled every 100 ms);
  * raw: `qemu-img create` of an overlay on the same cached base + `virsh define` + `virsh start` of the same
    domain XML (taken from a labcloud server, renamed, on a plain bridge with a static dnsmasq lease), then boot to
    SSH with no labcloud in the path. The two kinds of runs alternate, so a load that drifts hits both alike;
  * at once (`--parallel 5`): five SDK creates sent together from five threads, timed until the last server is
    ACTIVE (one poller lists the servers every 20 ms), against five raw qemu-img + virsh define/start sequences
    run together, timed until the last domain runs; `--parallel-rounds` rounds, alternating too.
Prints the medians, the ratios and the idle RSS of controller + agent; the last line is one JSON object.

    .venv/bin/python -m bench.create --runs 5 --parallel 5 --parallel-rounds 3
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paramiko
from huaweicloudsdkecs.v2 import ListServersDetailsRequest

from tests.e2e import journey
from tests.support import netns
from tests.support.cloud import Cloud, start_cloud
from tests.support.keys import write_keypair

RAW_BRIDGE, RAW_GATEWAY, RAW_IP, RAW_MAC = "rawbr0", "10.250.0.1", "10.250.0.10", "52:54:00:fa:00:10"


def _poll(check: Callable[[], bool], interval: float, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.perf_counter()
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout} s")


def _ssh_works(ns: str, ip: str, key: paramiko.PKey) -> bool:
    try:
        with netns.entered(ns):
            sock = socket.create_connection((ip, 22), timeout=1.0)
    except OSError:
        return False
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(
            ip,
            username="root",
            pkey=key,
            sock=sock,
            timeout=3,
            banner_timeout=3,
            auth_timeout=3,
            allow_agent=False,
            look_for_keys=False,
        )
        _, out, _ = client.exec_command("true", timeout=10)
        return out.channel.recv_exit_status() == 0
    except (OSError, paramiko.SSHException, EOFError):
        return False
    finally:
        client.close()
        sock.close()


def _new_key(workdir: Path) -> tuple[str, paramiko.PKey]:
    public, path = write_keypair(workdir / "id_ed25519")
    return public, paramiko.PKey.from_path(str(path))


def _virsh(cloud: Cloud, *argv: str) -> str:
    uri = f"qemu:///system?socket={cloud.home}/libvirt/run/libvirt-sock"
    return subprocess.run(
        ["virsh", "-q", "-c", uri, *argv], check=True, capture_output=True, text=True
    ).stdout


class LabBench:
    """Creates through labcloud with the official SDK, on one VPC, subnet and security group made once."""

    def __init__(self, cloud: Cloud, public_key: str, key: paramiko.PKey) -> None:
        self.cloud, self.key = cloud, key
        ecs, vpc, ims = cloud.ecs(), cloud.vpc(), cloud.ims()
        journey.import_keypair(ecs, "bench", public_key)
        self.vpc_id, self.subnet_id, self.sg_id = journey.create_network(
            vpc, name="bench", cidr="10.60.0.0/16", subnet_cidr="10.60.1.0/24", gateway="10.60.1.1"
        )
        self.image_id, self.flavor_id = journey.small_image_id(ims), journey.smallest_flavor_id(ecs)

    def _create(self, name: str) -> str:
        _, (server_id,) = journey.create_servers(
            self.cloud.ecs(),
            name=name,
            image_id=self.image_id,
            flavor_id=self.flavor_id,
            vpc_id=self.vpc_id,
            subnet_id=self.subnet_id,
            sg_id=self.sg_id,
            key_name="bench",
        )
        return server_id

    def _delete(self, server_ids: list[str]) -> None:
        ecs = self.cloud.ecs()
        assert journey.wait_job(ecs, journey.delete(ecs, server_ids)).status == "SUCCESS"

    def one(self, name: str) -> tuple[float, float, str]:
        """One create: (seconds to ACTIVE, seconds to the first SSH login, the domain's XML); then deleted."""
        ecs = self.cloud.ecs()
        t0 = time.perf_counter()
        server_id = self._create(name)
        t_active = _poll(
            lambda: journey.show(ecs, server_id).status in ("ACTIVE", "ERROR"), 0.02, 300, "ACTIVE"
        )
        server = journey.show(ecs, server_id)
        assert server.status == "ACTIVE", server.fault
        t_ssh = _poll(lambda: _ssh_works(self.cloud.ns, journey.fixed_ip(server), self.key), 0.1, 300, "SSH")
        domain_xml = _virsh(self.cloud, "dumpxml", f"lc-{server_id}")
        self._delete([server_id])
        return t_active - t0, t_ssh - t0, domain_xml

    def parallel(self, name: str, count: int) -> list[float]:
        """`count` creates sent at once from as many threads; seconds from the start to each server's ACTIVE,
        seen by one poller listing the project's servers every 20 ms. The servers are deleted afterwards."""
        start = threading.Barrier(count + 1)
        created: list[str] = []
        t0 = 0.0

        def create(i: int) -> None:
            start.wait()
            created.append(self._create(f"{name}-{i}"))

        with ThreadPoolExecutor(count) as pool:
            futures = [pool.submit(create, i) for i in range(count)]
            start.wait()
            t0 = time.perf_counter()
            active: dict[str, float] = {}
            ecs = self.cloud.ecs()
            deadline = time.monotonic() + 600
            while len(active) < count:
                listed = ecs.list_servers_details(ListServersDetailsRequest(limit=100)).servers or []
                now = time.perf_counter()
                for server in listed:
                    if server.id in created and server.id not in active:
                        assert server.status != "ERROR", server.fault
                        if server.status == "ACTIVE":
                            active[server.id] = now - t0
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{count - len(active)} of {count} servers not ACTIVE within 600 s")
                time.sleep(0.02)
            for future in futures:
                future.result()
        self._delete(created)
        return sorted(active.values())


def _raw_domain_xml(
    template: str, name: str, disk: Path, seed: Path, console: Path, mac: str, nic: int
) -> str:
    """The labcloud domain, renamed and moved onto the raw bridge: the same devices, no labcloud in the path."""
    root = ET.fromstring(template)
    root.find("name").text = name  # type: ignore[union-attr]
    root.find("uuid").text = str(uuid.uuid4())  # type: ignore[union-attr]
    for tag in ("metadata", "seclabel"):
        for el in root.findall(tag):
            root.remove(el)
    devices = root.find("devices")
    assert devices is not None
    for d in devices.findall("disk"):
        target = d.find("target").get("dev")  # type: ignore[union-attr]
        source = d.find("source")
        assert source is not None
        source.set("file", str(disk if target == "vda" else seed))
        for backing in d.findall("backingStore"):
            d.remove(backing)
    for serial in devices.findall("serial") + devices.findall("console"):
        src = serial.find("source")
        if src is not None and src.get("path"):
            src.set("path", str(console))
    for iface in devices.findall("interface"):
        iface.find("source").set("bridge", RAW_BRIDGE)  # type: ignore[union-attr]
        iface.find("mac").set("address", mac)  # type: ignore[union-attr]
        target = iface.find("target")
        if target is not None:
            target.set("dev", f"rawtap{nic}")
        for tag in ("alias", "address"):
            for el in iface.findall(tag):
                iface.remove(el)
    return ET.tostring(root, encoding="unicode")


class RawBench:
    """The same domains straight through qemu-img and virsh, on a plain bridge of the cloud's namespace with a
    static DHCP lease for the one that is waited on until SSH."""

    def __init__(self, cloud: Cloud, domain_xml: str, public_key: str, key: paramiko.PKey) -> None:
        self.cloud, self.domain_xml, self.key = cloud, domain_xml, key
        self.work = Path(tempfile.mkdtemp(prefix="raw-", dir=cloud.tmp))
        self.work.chmod(0o755)
        self.base = next((Path(cloud.home) / "agent" / "images").glob("*.qcow2"))
        (self.work / "meta-data").write_text("instance-id: raw-bench\nlocal-hostname: raw\n")
        (self.work / "user-data").write_text(f"#cloud-config\nssh_authorized_keys:\n  - {public_key}\n")
        self.seed = self.work / "seed.iso"
        subprocess.run(
            [
                "genisoimage",
                "-quiet",
                "-output",
                str(self.seed),
                "-volid",
                "cidata",
                "-joliet",
                "-rock",
                str(self.work / "user-data"),
                str(self.work / "meta-data"),
            ],
            check=True,
        )
        self._ns = ["ip", "netns", "exec", cloud.ns]
        self.dnsmasq: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RawBench:
        ns = self._ns
        subprocess.run([*ns, "ip", "link", "add", RAW_BRIDGE, "type", "bridge"], check=True)
        subprocess.run([*ns, "ip", "addr", "add", f"{RAW_GATEWAY}/24", "dev", RAW_BRIDGE], check=True)
        subprocess.run([*ns, "ip", "link", "set", RAW_BRIDGE, "up"], check=True)
        self.dnsmasq = subprocess.Popen(
            [
                *ns,
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--bind-interfaces",
                f"--interface={RAW_BRIDGE}",
                "--except-interface=lo",
                f"--dhcp-range={RAW_IP},static,255.255.255.0,infinite",
                f"--dhcp-host={RAW_MAC},{RAW_IP},raw",
                f"--dhcp-leasefile={self.work / 'leases'}",
            ]
        )
        return self

    def __exit__(self, *_: object) -> None:
        if self.dnsmasq is not None:
            self.dnsmasq.terminate()
            self.dnsmasq.wait(timeout=10)
        subprocess.run([*self._ns, "ip", "link", "del", RAW_BRIDGE], check=False)

    def _start(self, name: str, nic: int) -> float:
        """qemu-img overlay + virsh define + virsh start of domain `name`; the seconds it took."""
        disk, xml_path = self.work / f"{name}.qcow2", self.work / f"{name}.xml"
        mac = RAW_MAC if nic == 0 else f"52:54:00:fa:01:{nic:02x}"
        xml_path.write_text(
            _raw_domain_xml(self.domain_xml, name, disk, self.seed, self.work / f"{name}.log", mac, nic)
        )
        t0 = time.perf_counter()
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(self.base), str(disk), "1G"],
            check=True,
        )
        _virsh(self.cloud, "define", str(xml_path))
        _virsh(self.cloud, "start", name)
        return time.perf_counter() - t0

    def _remove(self, name: str) -> None:
        _virsh(self.cloud, "destroy", name)
        _virsh(self.cloud, "undefine", name)
        (self.work / f"{name}.qcow2").unlink()

    def one(self, name: str) -> tuple[float, float]:
        """(seconds to a running domain, seconds to the first SSH login)."""
        t0 = time.perf_counter()
        to_running = self._start(name, 0)
        t_ssh = _poll(lambda: _ssh_works(self.cloud.ns, RAW_IP, self.key), 0.1, 300, "raw SSH")
        self._remove(name)
        return to_running, t_ssh - t0

    def parallel(self, name: str, count: int) -> list[float]:
        """`count` domains started at once from as many threads: seconds from the start to each one running."""
        start = threading.Barrier(count + 1)

        def one(i: int) -> float:
            start.wait()
            self._start(f"{name}-{i}", i + 1)
            return time.perf_counter()

        with ThreadPoolExecutor(count) as pool:
            futures = [pool.submit(one, i) for i in range(count)]
            start.wait()
            t0 = time.perf_counter()
            done = [future.result() - t0 for future in futures]
        for i in range(count):
            self._remove(f"{name}-{i}")
        return sorted(done)


def idle_rss_mib(cloud: Cloud) -> dict[str, float]:
    rss: dict[str, float] = {}
    for name in ("controller", "agent"):
        pid = int((Path(cloud.home) / "run" / f"{name}.pid").read_text().split()[0])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss[name] = int(line.split()[1]) / 1024
    return rss


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="one-at-a-time creates of each kind")
    parser.add_argument("--parallel", type=int, default=5, help="servers created at once (0: skip that part)")
    parser.add_argument("--parallel-rounds", type=int, default=3, help="rounds of the at-once part")
    args = parser.parse_args()
    med = statistics.median
    lab_active: list[float] = []
    lab_ssh: list[float] = []
    raw_running: list[float] = []
    raw_ssh: list[float] = []
    lab_par: list[list[float]] = []
    raw_par: list[list[float]] = []
    cloud = start_cloud()
    try:
        time.sleep(5)
        rss = idle_rss_mib(cloud)
        public_key, key = _new_key(Path(cloud.tmp))
        lab = LabBench(cloud, public_key, key)
        # Run 0 warms the agent's image cache and gives the domain XML the raw baseline starts; not counted.
        active, ssh, domain_xml = lab.one("bench-0")
        print(f"labcloud warm-up: ACTIVE {active:.3f} s, SSH {ssh:.3f} s", file=sys.stderr)
        with RawBench(cloud, domain_xml, public_key, key) as raw:
            # Alternating, and which goes first alternates too: a load that drifts hits both alike.
            for i in range(1, args.runs + 1):
                for kind in ("lab", "raw") if i % 2 else ("raw", "lab"):
                    if kind == "lab":
                        active, ssh, _ = lab.one(f"bench-{i}")
                        lab_active.append(active)
                        lab_ssh.append(ssh)
                        print(f"labcloud run {i}: ACTIVE {active:.3f} s, SSH {ssh:.3f} s", file=sys.stderr)
                    else:
                        running, ssh = raw.one(f"raw-{i}")
                        raw_running.append(running)
                        raw_ssh.append(ssh)
                        print(f"raw run {i}: RUNNING {running:.3f} s, SSH {ssh:.3f} s", file=sys.stderr)
            rss_after = idle_rss_mib(cloud)
            for r in range(1, args.parallel_rounds + 1 if args.parallel else 1):
                for kind in ("lab", "raw") if r % 2 else ("raw", "lab"):
                    times = (lab if kind == "lab" else raw).parallel(f"{kind}par-{r}", args.parallel)
                    (lab_par if kind == "lab" else raw_par).append(times)
                    print(
                        f"{kind} at once, round {r}: " + ", ".join(f"{t:.3f}" for t in times), file=sys.stderr
                    )
    finally:
        problems = cloud.close()
        if problems:
            print("cleanup problems: " + "; ".join(problems), file=sys.stderr)
    result: dict[str, Any] = {
        "runs": args.runs,
        "labcloud_to_active_s": round(med(lab_active), 3),
        "raw_to_running_s": round(med(raw_running), 3),
        "labcloud_to_ssh_s": round(med(lab_ssh), 3),
        "raw_to_ssh_s": round(med(raw_ssh), 3),
        "idle_rss_mib": {k: round(v, 1) for k, v in rss.items()},
        "idle_rss_total_mib": round(sum(rss.values()), 1),
        "rss_after_workload_total_mib": round(sum(rss_after.values()), 1),
    }
    result["ratio_active_vs_raw_running"] = _ratio(result["labcloud_to_active_s"], result["raw_to_running_s"])
    result["ratio_ssh_vs_raw_ssh"] = _ratio(result["labcloud_to_ssh_s"], result["raw_to_ssh_s"])
    print(
        f"create → ACTIVE (median of {args.runs}): labcloud {result['labcloud_to_active_s']:.3f} s, raw "
        f"qemu-img + virsh define/start {result['raw_to_running_s']:.3f} s, "
        f"ratio {result['ratio_active_vs_raw_running']:.2f} (bar ≤ 1.3)"
    )
    print(
        f"create → SSH ready: labcloud {result['labcloud_to_ssh_s']:.3f} s, raw {result['raw_to_ssh_s']:.3f} s, "
        f"ratio {result['ratio_ssh_vs_raw_ssh']:.2f} (bar ≤ 1.2)"
    )
    if lab_par:
        # Per round: the time until the last of the servers is ACTIVE / running; the median over the rounds.
        lab_all, raw_all = med(max(t) for t in lab_par), med(max(t) for t in raw_par)
        result["parallel"] = {
            "servers": args.parallel,
            "rounds": len(lab_par),
            "labcloud_all_active_s": round(lab_all, 3),
            "raw_all_running_s": round(raw_all, 3),
            "labcloud_median_server_s": round(med(med(t) for t in lab_par), 3),
            "raw_median_server_s": round(med(med(t) for t in raw_par), 3),
            "ratio_all": _ratio(lab_all, raw_all),
        }
        print(
            f"{args.parallel} creates at once (median of {len(lab_par)} rounds, until the last is up): labcloud "
            f"{lab_all:.3f} s to all ACTIVE, raw {raw_all:.3f} s to all running, "
            f"ratio {result['parallel']['ratio_all']:.2f} (bar ≤ 1.5)"
        )
    print(
        f"idle RSS: controller {rss.get('controller', 0):.1f} MiB + agent {rss.get('agent', 0):.1f} MiB = "
        f"{result['idle_rss_total_mib']:.1f} MiB (bar ≤ 150); "
        f"{result['rss_after_workload_total_mib']:.1f} MiB right after the one-at-a-time creates and deletes"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
