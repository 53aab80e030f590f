"""Golden domain XML: compared semantically, checked by libvirt's schema, really defined in the test driver.

Regenerate the goldens after an intended change with
`.venv/bin/pytest tests/agent/virt/test_domain_xml.py --update-goldens` and review the diff.
"""

from __future__ import annotations

import difflib
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from agent.schemas import ImageRef, NetworkSpec, PortSpec, ServerSpec, SubnetSpec
from agent.virt.designer import design_domain
from agent.virt.domain_xml import (
    METADATA_NS,
    DiskSpec,
    domain_name,
    parse_labcloud_metadata,
    render_disk_device,
    render_domain,
)
from agent.virt.host import LibvirtHost

GOLDEN_DIR = Path(__file__).parent / "golden"
STATE = Path("/var/lib/labcloud/agent/instances")

SERVER_A = "3f0c6a52-8d1e-4c57-9b1a-2f6e0d4c9a11"
SERVER_B = "a7d2e9c4-51b3-4f0e-8c6d-93b1f7e2a0c5"
SERVER_C = "0b9e4d71-c2a8-4e35-b6f0-5d13a8c7e942"


def _network(vpc: str, vni: int, *subnets: tuple[str, str, int]) -> NetworkSpec:
    return NetworkSpec(
        vpc_id=vpc,
        vni=vni,
        cidr="10.0.0.0/16",
        subnets=[
            SubnetSpec(id=sid, cidr=cidr, gateway_ip=cidr.replace("0/24", "1"), mtu=mtu)
            for sid, cidr, mtu in subnets
        ],
    )


def _server(server_id: str, name: str, *, vcpus: int, ram_mib: int, ports: list[PortSpec]) -> ServerSpec:
    return ServerSpec(
        id=server_id,
        name=name,
        hostname=name,
        project_id="0f3b1c2d4e5f46a7b8c9d0e1f2a3b4c5",
        vcpus=vcpus,
        ram_mib=ram_mib,
        root_disk_gib=1,
        image=ImageRef(id="img-tiny", checksum="0" * 64, url="http://controller/images/img-tiny"),
        ports=ports,
        networks=[
            _network("vpc-one", 101, ("subnet-a", "10.0.1.0/24", 1450)),
            _network("vpc-two", 102, ("subnet-b", "10.0.2.0/24", 1400)),
        ],
    )


def _port(port_id: str, mac: str, subnet: str, vpc: str) -> PortSpec:
    return PortSpec(id=port_id, mac=mac, ip="10.0.1.10", subnet_id=subnet, vpc_id=vpc)


def _nic_names(port: PortSpec) -> tuple[str, str]:
    return f"lcb{port.vpc_id[-3:]}", f"lct{port.id[-6:]}"


def _case(server: ServerSpec, accelerator: str, *, seed: bool) -> str:
    base = STATE / server.id
    spec = design_domain(
        server,
        accelerator=accelerator,
        root_disk=base / "root.qcow2",
        seed=base / "seed.iso" if seed else None,
        console_log=base / "console.log",
        nic_names=_nic_names,
    )
    return render_domain(spec)


CASES = {
    "tcg_single_nic": lambda: _case(
        _server(
            SERVER_A,
            "web-1",
            vcpus=1,
            ram_mib=128,
            ports=[_port("port-000001", "fa:16:3e:00:00:01", "subnet-a", "vpc-one")],
        ),
        "tcg",
        seed=True,
    ),
    "kvm_two_nics": lambda: _case(
        _server(
            SERVER_B,
            "db-primary",
            vcpus=2,
            ram_mib=2048,
            ports=[
                _port("port-000002", "fa:16:3e:00:00:02", "subnet-a", "vpc-one"),
                _port("port-000003", "fa:16:3e:00:00:03", "subnet-b", "vpc-two"),
            ],
        ),
        "kvm",
        seed=True,
    ),
    "no_seed": lambda: _case(
        _server(
            SERVER_C,
            "bare",
            vcpus=1,
            ram_mib=512,
            ports=[_port("port-000004", "fa:16:3e:00:00:04", "subnet-a", "vpc-one")],
        ),
        "tcg",
        seed=False,
    ),
}


def canonical(xml: str) -> str:
    """Whitespace, attribute order and namespace prefixes do not matter; everything else does."""
    return ET.canonicalize(xml_data=xml, strip_text=True)


def _pretty(xml: str) -> list[str]:
    root = ET.fromstring(canonical(xml))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode").splitlines()


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str, update_goldens: bool) -> None:
    golden = GOLDEN_DIR / f"{case}.xml"
    rendered = CASES[case]()
    if update_goldens:
        golden.write_text(rendered)
        pytest.skip(f"rewrote {golden}")
    expected = golden.read_text()
    if canonical(rendered) != canonical(expected):
        diff = "\n".join(
            difflib.unified_diff(_pretty(expected), _pretty(rendered), "golden", "rendered", lineterm="")
        )
        pytest.fail(f"{case}: rendered XML differs from {golden.name} (--update-goldens if intended)\n{diff}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_validates_against_libvirt_schema(case: str, tmp_path: Path) -> None:
    tool = shutil.which("virt-xml-validate")
    if tool is None or shutil.which("xmllint") is None:
        pytest.skip("virt-xml-validate (libvirt-clients) and xmllint (libxml2-utils) are needed")
    path = tmp_path / f"{case}.xml"
    path.write_text((GOLDEN_DIR / f"{case}.xml").read_text())
    done = subprocess.run([tool, str(path), "domain"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_lives_in_the_test_driver(case: str, test_host: LibvirtHost) -> None:
    xml = (GOLDEN_DIR / f"{case}.xml").read_text()
    server_id = parse_labcloud_metadata(xml)["server_id"]  # type: ignore[index]

    test_host.define(xml)
    assert test_host.power_state(server_id) == "shutoff"
    test_host.start(server_id)
    assert test_host.power_state(server_id) == "running"
    assert test_host.list_servers() == {server_id: "running"}

    # libvirt kept every part we rely on (an element it did not understand would be dropped or rejected).
    stored = ET.fromstring(test_host.domain_xml(server_id, inactive=True))
    ours = ET.fromstring(xml)
    assert stored.findtext("name") == domain_name(server_id)
    assert stored.findtext("uuid") == server_id
    assert stored.get("type") == ours.get("type")
    assert stored.findtext("vcpu") == ours.findtext("vcpu")
    assert parse_labcloud_metadata(ET.tostring(stored, encoding="unicode")) == parse_labcloud_metadata(xml)
    for path in (
        "features/tcg/tb-cache",
        "cpu[@mode='host-passthrough']",
        "devices/disk[@device='cdrom']/readonly",
        "devices/serial/source[@append='on']",
        "devices/interface/mtu",
        "devices/memballoon/stats[@period='10']",
        "devices/rng/backend",
    ):
        assert (stored.find(path) is None) == (ours.find(path) is None), path
    assert [i.find("target").get("dev") for i in stored.iter("interface")] == [  # type: ignore[union-attr]
        i.find("target").get("dev")  # type: ignore[union-attr]
        for i in ours.iter("interface")
    ]

    test_host.destroy(server_id)
    assert test_host.power_state(server_id) == "shutoff"
    test_host.undefine(server_id)
    assert test_host.power_state(server_id) == "missing"
    assert test_host.list_servers() == {}


def test_cdrom_stays_off_the_virtio_names() -> None:
    root = ET.fromstring(CASES["tcg_single_nic"]())
    targets = {d.get("device"): d.find("target").attrib for d in root.iter("disk")}  # type: ignore[union-attr]
    assert targets["disk"] == {"dev": "vda", "bus": "virtio"}
    assert targets["cdrom"] == {"dev": "hdc", "bus": "ide"}


def test_metadata_round_trip() -> None:
    meta = parse_labcloud_metadata(CASES["kvm_two_nics"]())
    assert meta == {
        "server_id": SERVER_B,
        "project_id": "0f3b1c2d4e5f46a7b8c9d0e1f2a3b4c5",
        "name": "db-primary",
    }


def test_metadata_keeps_unusual_names() -> None:
    server = _server(SERVER_A, "<web & 'db'> ü", vcpus=1, ram_mib=128, ports=[])
    meta = parse_labcloud_metadata(_case(server, "tcg", seed=False))
    assert meta is not None and meta["name"] == "<web & 'db'> ü"


def test_metadata_absent_for_foreign_domains() -> None:
    assert parse_labcloud_metadata("<domain type='qemu'><name>other</name></domain>") is None
    other_ns = "<domain><metadata><x:server xmlns:x='urn:other'><x:id>1</x:id></x:server></metadata></domain>"
    assert parse_labcloud_metadata(other_ns) is None
    no_id = (
        f"<domain><metadata><lc:server xmlns:lc='{METADATA_NS}'><lc:name>n</lc:name></lc:server>"
        "</metadata></domain>"
    )
    assert parse_labcloud_metadata(no_id) is None


def test_metadata_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_labcloud_metadata("<domain>")


def test_disk_device_for_hot_plug() -> None:
    xml = render_disk_device(DiskSpec(source=Path("/srv/vol1.qcow2"), target="vdb", serial="vol-0001"))
    assert canonical(xml) == canonical(
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/srv/vol1.qcow2'/>"
        "<target dev='vdb' bus='virtio'/><serial>vol-0001</serial></disk>"
    )
