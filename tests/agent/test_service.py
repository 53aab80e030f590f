"""AgentService over libvirt's test driver, real qemu-img overlays, real seeds and a real base image.

Each test gets a fresh `test:///<tmp>/node.xml`. The test driver keeps its state per connection, so the checks
go through the service's own `LibvirtHost`; files are checked on disk and with `qemu-img info`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from agent.config import AgentSettings
from agent.errors import NetworkError, NotFound, StorageError, VirtError
from agent.net.network import NullNetwork
from agent.net.ports import BoundPort
from agent.schemas import (
    ImageRef,
    NetworkSpec,
    PortSpec,
    RuleSpec,
    SecurityGroupSpec,
    ServerAction,
    ServerSpec,
    SubnetSpec,
)
from agent.service import AgentService, InvalidRequest
from agent.storage.images import ImageCache
from agent.storage.layout import image_cache_dir
from agent.storage.seed import read_seed
from agent.virt.host import LibvirtHost

NODE_XML = """\
<node>
  <cpu>
    <nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads>
    <mhz>2000</mhz><model>x86_64</model>
  </cpu>
  <memory>8388608</memory>
</node>
"""


class RecordingNetwork(NullNetwork):
    """NullNetwork that also remembers the last port sync, to check what the service asked of the network."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[BoundPort] = []
        self.groups: list[SecurityGroupSpec] = []
        self.fail_sync = False

    def sync_ports(self, ports: list[BoundPort], groups: list[SecurityGroupSpec]) -> None:
        if self.fail_sync:
            raise NetworkError("iptables-restore refused the ruleset")
        self.ports, self.groups = list(ports), list(groups)


def make_base_image(directory: Path) -> ImageRef:
    path = directory / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ImageRef(id="img-tiny", checksum=digest, url=path.as_uri())


def make_spec(image: ImageRef, server_id: str = "srv-1", *, vpc: str = "vpc-a", n: int = 1) -> ServerSpec:
    subnet = SubnetSpec(id=f"sub-{vpc}", cidr="10.10.1.0/24", gateway_ip="10.10.1.1")
    return ServerSpec(
        id=server_id,
        name=f"name-{server_id}",
        hostname=f"host-{server_id}",
        project_id="proj-1",
        vcpus=1,
        ram_mib=128,
        root_disk_gib=1,
        image=image,
        ports=[
            PortSpec(
                id=f"port-{server_id}",
                mac=f"52:54:00:10:01:{n:02x}",
                ip=f"10.10.1.{10 + n}",
                subnet_id=subnet.id,
                vpc_id=vpc,
                security_group_ids=["sg-web"],
            )
        ],
        networks=[NetworkSpec(vpc_id=vpc, vni=100 + n, cidr="10.10.0.0/16", subnets=[subnet])],
        security_groups=[SecurityGroupSpec(id="sg-web", rules=[RuleSpec(id="r1", direction="egress")])],
        ssh_keys=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG0000 test@lab"],
    )


class Rig:
    """One agent service on a fresh test-driver node, with handles on its parts for checking."""

    def __init__(self, tmp_path: Path, image: ImageRef, state_dir: Path | None = None) -> None:
        node = tmp_path / "node.xml"
        if not node.exists():
            node.write_text(NODE_XML)
        self.settings = AgentSettings(
            state_dir=state_dir or tmp_path / "state",
            join_token=SecretStr("t0ken"),
            libvirt_uri=f"test://{node}",
            accelerator="tcg",
            network_driver="null",
            acpi_timeout_seconds=0.5,
        )
        self.state = self.settings.state_dir
        self.host = LibvirtHost(self.settings.libvirt_uri, poll_interval=0.01)
        self.network = RecordingNetwork()
        self.images = ImageCache(image_cache_dir(self.state))
        self.service = AgentService(
            self.settings, host=self.host, network=self.network, images=self.images, accelerator="tcg"
        )
        self.image = image

    def close(self) -> None:
        self.images.close()
        self.service.close()

    def instance_files(self, server_id: str) -> set[str]:
        directory = self.state / "instances" / server_id
        return {p.name for p in directory.iterdir()} if directory.exists() else set()

    def spec_ids(self) -> set[str]:
        return {p.stem for p in (self.state / "specs").glob("*.json")}

    def stored_spec(self, server_id: str) -> ServerSpec:
        return ServerSpec.model_validate_json((self.state / "specs" / f"{server_id}.json").read_text())


@pytest.fixture
def image(tmp_path: Path) -> ImageRef:
    return make_base_image(tmp_path)


@pytest.fixture
def rig(tmp_path: Path, image: ImageRef) -> Iterator[Rig]:
    r = Rig(tmp_path, image)
    yield r
    r.close()


def backing_file(path: Path) -> str:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, text=True, check=True
    )
    return str(json.loads(out.stdout)["full-backing-filename"])


def assert_nothing_of(rig: Rig, server_id: str) -> None:
    assert rig.host.power_state(server_id) == "missing"
    assert not (rig.state / "instances" / server_id).exists()
    assert server_id not in rig.spec_ids()
    assert all(bp.port.id != f"port-{server_id}" for bp in rig.network.ports)


def test_ensure_builds_disk_seed_spec_and_running_domain(rig: Rig) -> None:
    spec = make_spec(rig.image)

    state = rig.service.ensure_server(spec)

    assert (state.id, state.power, state.accelerator) == ("srv-1", "running", "tcg")
    assert rig.host.list_servers() == {"srv-1": "running"}
    assert rig.instance_files("srv-1") == {"root.qcow2", "seed.iso"}
    cached = rig.state / "images" / f"{rig.image.checksum}.qcow2"
    assert Path(backing_file(rig.state / "instances/srv-1/root.qcow2")) == cached
    seed = read_seed(rig.state / "instances/srv-1/seed.iso")
    assert "host-srv-1" in seed["meta-data"] and "ssh-ed25519" in seed["user-data"]
    assert rig.stored_spec("srv-1") == spec
    xml = rig.host.domain_xml("srv-1")
    for path in ("root.qcow2", "seed.iso", "console.log"):
        assert str(rig.state / "instances/srv-1" / path) in xml
    assert rig.network.network_ids() == ["vpc-a"]
    assert [(bp.port.id, bp.tap, bp.hostname) for bp in rig.network.ports] == [
        ("port-srv-1", "lctportsrv1", "host-srv-1")
    ]
    assert [g.id for g in rig.network.groups] == ["sg-web"]


def test_ensure_twice_is_harmless(rig: Rig) -> None:
    spec = make_spec(rig.image)
    rig.service.ensure_server(spec)
    disk = rig.state / "instances/srv-1/root.qcow2"
    seed = rig.state / "instances/srv-1/seed.iso"

    def identity() -> tuple[int, ...]:
        return (disk.stat().st_ino, disk.stat().st_mtime_ns, seed.stat().st_ino, seed.stat().st_mtime_ns)

    before = identity()

    state = rig.service.ensure_server(spec)

    assert state.power == "running"
    assert identity() == before
    assert rig.host.list_servers() == {"srv-1": "running"}
    assert rig.instance_files("srv-1") == {"root.qcow2", "seed.iso"}
    assert len(rig.network.ports) == 1


def test_ensure_with_power_shutoff_defines_without_starting(rig: Rig) -> None:
    spec = make_spec(rig.image).model_copy(update={"power": "shutoff"})
    assert rig.service.ensure_server(spec).power == "shutoff"
    assert rig.host.list_servers() == {"srv-1": "shutoff"}
    # The same spec asking for running later starts the existing domain.
    assert rig.service.ensure_server(spec.model_copy(update={"power": "running"})).power == "running"


def test_stop_start_reboot(rig: Rig) -> None:
    rig.service.ensure_server(make_spec(rig.image))
    act = rig.service.server_action

    assert act("srv-1", ServerAction(action="stop")).power == "shutoff"
    assert rig.stored_spec("srv-1").power == "shutoff"
    assert act("srv-1", ServerAction(action="stop", type="HARD")).power == "shutoff"  # already off: no-op
    assert act("srv-1", ServerAction(action="start")).power == "running"
    assert rig.stored_spec("srv-1").power == "running"
    assert act("srv-1", ServerAction(action="reboot", type="HARD")).power == "running"
    # The test driver sends no reboot event, so a soft reboot falls back to a power cycle after the timeout.
    assert act("srv-1", ServerAction(action="reboot")).power == "running"
    assert act("srv-1", ServerAction(action="stop", type="HARD")).power == "shutoff"
    # A reboot of a stopped server starts it.
    assert act("srv-1", ServerAction(action="reboot")).power == "running"
    assert rig.host.list_servers() == {"srv-1": "running"}
    assert rig.instance_files("srv-1") == {"root.qcow2", "seed.iso"}


def test_delete_removes_everything_and_is_idempotent(rig: Rig) -> None:
    rig.service.ensure_server(make_spec(rig.image))
    (rig.state / "instances/srv-1/console.log").write_text("boot\n")  # as QEMU would write it

    rig.service.delete_server("srv-1")

    assert_nothing_of(rig, "srv-1")
    assert rig.network.ports == []
    # The VPC's network outlives its last port for a grace time, so the next server there is wired fast.
    assert rig.network.network_ids() == ["vpc-a"]
    assert (rig.state / "images" / f"{rig.image.checksum}.qcow2").exists()  # the cache stays for the next one
    rig.service.delete_server("srv-1")  # deleting a missing server succeeds
    with pytest.raises(NotFound):
        rig.service.server_state("srv-1")


def test_networks_without_ports_are_collected_after_their_grace_time(rig: Rig) -> None:
    rig.service.ensure_server(make_spec(rig.image, "srv-1", n=1))
    rig.service.delete_server("srv-1")
    rig.service.settings.network_idle_seconds = 3600
    assert rig.service.collect_idle_networks() == []
    assert rig.network.network_ids() == ["vpc-a"]
    rig.service.settings.network_idle_seconds = 0
    assert rig.service.collect_idle_networks() == ["vpc-a"]
    assert rig.network.network_ids() == []


def test_a_network_in_use_again_is_not_collected(rig: Rig) -> None:
    rig.service.ensure_server(make_spec(rig.image, "srv-1", n=1))
    rig.service.delete_server("srv-1")
    rig.service.settings.network_idle_seconds = 0
    rig.service.ensure_server(make_spec(rig.image, "srv-2", n=2))
    assert rig.service.collect_idle_networks() == []
    assert rig.network.network_ids() == ["vpc-a"]


def test_delete_keeps_networks_other_servers_use(rig: Rig) -> None:
    rig.service.ensure_server(make_spec(rig.image, "srv-1", n=1))
    rig.service.ensure_server(make_spec(rig.image, "srv-2", n=2))

    rig.service.delete_server("srv-1")

    assert rig.network.network_ids() == ["vpc-a"]
    assert [bp.port.id for bp in rig.network.ports] == ["port-srv-2"]
    assert rig.host.list_servers() == {"srv-2": "running"}


def test_bad_image_checksum_leaves_nothing(rig: Rig) -> None:
    bad = rig.image.model_copy(update={"checksum": "0" * 64})

    with pytest.raises(StorageError, match="fetching image failed"):
        rig.service.ensure_server(make_spec(bad))

    assert_nothing_of(rig, "srv-1")
    assert rig.network.network_ids() == []
    assert list((rig.state / "images").iterdir()) == []


def test_domain_rejected_by_libvirt_undoes_disk_seed_spec_and_ports(rig: Rig) -> None:
    rig.service.ensure_server(make_spec(rig.image, "srv-1", vpc="vpc-a", n=1))
    bad = make_spec(rig.image, "srv-2", vpc="vpc-b", n=2)
    bad.ports[0].mac = "zz:54:00:10:01:02"  # libvirt's schema validation refuses this MAC

    with pytest.raises(VirtError, match="server srv-2: defining domain failed") as caught:
        rig.service.ensure_server(bad)

    assert caught.value.code == VirtError.code
    assert_nothing_of(rig, "srv-2")
    # The other server and its network are untouched; the network this call created is gone again.
    assert rig.network.network_ids() == ["vpc-a"]
    assert [bp.port.id for bp in rig.network.ports] == ["port-srv-1"]
    assert rig.host.list_servers() == {"srv-1": "running"}
    assert rig.spec_ids() == {"srv-1"}


def test_port_sync_failure_leaves_nothing(rig: Rig) -> None:
    rig.network.fail_sync = True

    with pytest.raises(NetworkError, match="syncing ports failed: iptables-restore refused"):
        rig.service.ensure_server(make_spec(rig.image))

    assert_nothing_of(rig, "srv-1")
    assert rig.network.network_ids() == []


def test_failed_update_of_existing_server_keeps_it(rig: Rig) -> None:
    spec = make_spec(rig.image)
    rig.service.ensure_server(spec)
    changed = spec.model_copy(update={"name": "renamed"})
    rig.network.fail_sync = True

    with pytest.raises(NetworkError):
        rig.service.ensure_server(changed)

    assert rig.stored_spec("srv-1") == spec  # the previous desired state is back
    assert rig.host.list_servers() == {"srv-1": "running"}
    assert rig.instance_files("srv-1") == {"root.qcow2", "seed.iso"}
    assert rig.network.network_ids() == ["vpc-a"]


def test_unknown_and_invalid_ids(rig: Rig) -> None:
    with pytest.raises(NotFound):
        rig.service.server_state("nope")
    with pytest.raises(NotFound):
        rig.service.server_action("nope", ServerAction(action="start"))
    with pytest.raises(NotFound):
        rig.service.console_output("nope")
    with pytest.raises(InvalidRequest):
        rig.service.server_state("../etc")
    with pytest.raises(InvalidRequest):
        rig.service.ensure_server(make_spec(rig.image, "bad/id"))


def test_console_output_tail(rig: Rig) -> None:
    rig.service.ensure_server(make_spec(rig.image))
    assert rig.service.console_output("srv-1") == ""
    lines = [f"line {i}\n" for i in range(100)]
    (rig.state / "instances/srv-1/console.log").write_text("".join(lines))

    assert rig.service.console_output("srv-1") == "".join(lines)
    assert rig.service.console_output("srv-1", 3) == "line 97\nline 98\nline 99\n"


def test_host_info(rig: Rig) -> None:
    rig.service.ensure_server(make_spec(rig.image, "srv-1", n=1))
    rig.service.ensure_server(make_spec(rig.image, "srv-2", n=2).model_copy(update={"power": "shutoff"}))

    info = rig.service.host_info()

    assert (info.vcpus, info.memory_mib, info.accelerator) == (4, 8192, "tcg")
    assert info.host_id == rig.settings.host_id and info.url == "http://127.0.0.1:8779"
    assert info.disk_gib > 0
    assert [(s.id, s.power) for s in info.servers] == [("srv-1", "running"), ("srv-2", "shutoff")]


def test_update_security_groups_rewrites_specs_and_firewall(rig: Rig) -> None:
    rig.service.ensure_server(make_spec(rig.image))
    ssh = RuleSpec(id="r2", direction="ingress", protocol="tcp", port_range_min=22, port_range_max=22)
    new = SecurityGroupSpec(id="sg-web", rules=[ssh], member_ips=["10.10.1.11"])
    unrelated = SecurityGroupSpec(id="sg-other")

    rig.service.update_security_groups([new, unrelated])

    assert rig.stored_spec("srv-1").security_groups == [new]
    assert rig.network.groups == [new]


def test_restart_resyncs_networks_and_restores_lost_domains_from_stored_specs(
    tmp_path: Path, rig: Rig
) -> None:
    rig.service.ensure_server(make_spec(rig.image))
    rig.service.ensure_server(make_spec(rig.image, "srv-2", n=2).model_copy(update={"power": "shutoff"}))
    root = rig.state / "instances" / "srv-1" / "root.qcow2"
    inode = root.stat().st_ino
    rig.close()
    # A new service on the same state dir; a new test-driver connection has no domains (a lost hypervisor).
    again = Rig(tmp_path, rig.image, state_dir=rig.state)
    try:
        again.service.resync()
        assert again.network.network_ids() == ["vpc-a"]
        assert sorted(bp.port.id for bp in again.network.ports) == ["port-srv-1", "port-srv-2"]
        # Each domain is back as its spec wants it, on the disk it had.
        assert again.host.list_servers() == {"srv-1": "running", "srv-2": "shutoff"}
        assert root.stat().st_ino == inode
        # Re-PUTting the spec changes nothing.
        assert again.service.ensure_server(again.stored_spec("srv-1")).power == "running"
    finally:
        again.close()


def test_a_restart_in_the_middle_of_a_delete_does_not_bring_the_server_back(tmp_path: Path, rig: Rig) -> None:
    rig.service.ensure_server(make_spec(rig.image))
    rig.service._specs.mark_deleting("srv-1")  # where delete_server stands when the agent is killed in it
    rig.close()
    again = Rig(tmp_path, rig.image, state_dir=rig.state)
    try:
        again.service.resync()
        assert again.host.list_servers() == {}
        again.service.delete_server("srv-1")  # the controller's retry
        assert sorted(p.name for p in (rig.state / "specs").iterdir()) == []
        # A later PUT of the same server is a new wish: it clears an unfinished delete's mark.
        again.service.ensure_server(make_spec(rig.image))
        again.service._specs.mark_deleting("srv-1")
        assert again.service._specs.deleting("srv-1")
        again.service.ensure_server(make_spec(rig.image))
        assert not again.service._specs.deleting("srv-1")
    finally:
        again.close()


def test_concurrent_ensures_of_different_servers(rig: Rig) -> None:
    errors: list[BaseException] = []

    def ensure(n: int) -> None:
        try:
            rig.service.ensure_server(make_spec(rig.image, f"srv-{n}", vpc=f"vpc-{n % 2}", n=n))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ensure, args=(n,)) for n in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert rig.host.list_servers() == {f"srv-{n}": "running" for n in range(1, 5)}
    assert rig.network.network_ids() == ["vpc-0", "vpc-1"]
    assert sorted(bp.port.id for bp in rig.network.ports) == [f"port-srv-{n}" for n in range(1, 5)]
