"""Unit tests of the policy that turns a ServerSpec into a DomainSpec."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from agent.schemas import ImageRef, NetworkSpec, PortSpec, ServerSpec, SubnetSpec
from agent.virt.designer import design_domain, libvirt_uuid, tb_cache_mib
from agent.virt.domain_xml import CdromSpec, DiskSpec, DomainSpec, NicSpec

SERVER_ID = "5e2b8f0a-7c41-4d93-a6e8-1f0b2c3d4e5f"
ROOT = Path("/srv/lc/root.qcow2")
SEED = Path("/srv/lc/seed.iso")
CONSOLE = Path("/srv/lc/console.log")


def _spec(
    *, server_id: str = SERVER_ID, ram_mib: int = 256, ports: list[PortSpec] | None = None
) -> ServerSpec:
    return ServerSpec(
        id=server_id,
        name="app",
        hostname="app",
        project_id="proj-1",
        vcpus=2,
        ram_mib=ram_mib,
        root_disk_gib=2,
        image=ImageRef(id="img", checksum="1" * 64, url="http://c/img"),
        ports=ports or [],
        networks=[
            NetworkSpec(
                vpc_id="vpc-1",
                vni=7,
                cidr="10.1.0.0/16",
                subnets=[
                    SubnetSpec(id="sn-1", cidr="10.1.1.0/24", gateway_ip="10.1.1.1", mtu=1450),
                    SubnetSpec(id="sn-2", cidr="10.1.2.0/24", gateway_ip="10.1.2.1", mtu=1380),
                ],
            )
        ],
    )


def _port(port_id: str, subnet: str) -> PortSpec:
    return PortSpec(
        id=port_id, mac=f"fa:16:3e:00:00:{port_id[-2:]}", ip="10.1.1.5", subnet_id=subnet, vpc_id="vpc-1"
    )


def _design(spec: ServerSpec, accelerator: str = "tcg", seed: Path | None = SEED) -> DomainSpec:
    return design_domain(
        spec,
        accelerator=accelerator,
        root_disk=ROOT,
        seed=seed,
        console_log=CONSOLE,
        nic_names=lambda port: (f"br-{port.vpc_id}", f"tap-{port.id}"),
    )


def test_tcg_domain() -> None:
    domain = _design(_spec(ram_mib=128))
    assert domain.domain_type == "qemu"
    assert not domain.cpu_passthrough
    assert domain.tb_cache_mib == 32
    assert (domain.server_id, domain.uuid, domain.project_id, domain.server_name) == (
        SERVER_ID,
        SERVER_ID,
        "proj-1",
        "app",
    )
    assert (domain.vcpus, domain.memory_mib) == (2, 128)
    assert domain.disks == (DiskSpec(source=ROOT, target="vda"),)
    assert domain.cdroms == (CdromSpec(source=SEED),)
    assert domain.serial.path == CONSOLE and domain.serial.append


def test_kvm_domain_passes_the_cpu_through_and_has_no_tcg_cache() -> None:
    domain = _design(_spec(), accelerator="kvm")
    assert domain.domain_type == "kvm"
    assert domain.cpu_passthrough
    assert domain.tb_cache_mib is None


def test_nics_follow_port_order_with_names_from_the_network_layer_and_subnet_mtu() -> None:
    ports = [_port("port-02", "sn-2"), _port("port-01", "sn-1"), _port("port-03", "sn-unknown")]
    domain = _design(_spec(ports=ports))
    assert domain.nics == (
        NicSpec(bridge="br-vpc-1", tap="tap-port-02", mac="fa:16:3e:00:00:02", mtu=1380),
        NicSpec(bridge="br-vpc-1", tap="tap-port-01", mac="fa:16:3e:00:00:01", mtu=1450),
        NicSpec(bridge="br-vpc-1", tap="tap-port-03", mac="fa:16:3e:00:00:03", mtu=None),
    )


def test_no_seed_means_no_cdrom() -> None:
    assert _design(_spec(), seed=None).cdroms == ()


def test_unknown_accelerator_is_refused() -> None:
    with pytest.raises(ValueError, match="accelerator"):
        _design(_spec(), accelerator="xen")


def test_uuid_is_the_server_id_or_a_stable_derivation() -> None:
    assert libvirt_uuid(SERVER_ID.upper()) == SERVER_ID
    derived = libvirt_uuid("srv-0001")
    assert derived == libvirt_uuid("srv-0001") != libvirt_uuid("srv-0002")
    assert uuid.UUID(derived).version == 5
    assert _design(_spec(server_id="srv-0001")).uuid == derived


@pytest.mark.parametrize(
    ("ram_mib", "cache"), [(64, 32), (128, 32), (256, 64), (512, 128), (1024, 256), (65536, 256)]
)
def test_tb_cache_grows_with_ram_within_bounds(ram_mib: int, cache: int) -> None:
    assert tb_cache_mib(ram_mib) == cache
