"""Policy: turn the controller's `ServerSpec` plus host-local facts (accelerator, paths, device names) into a
`DomainSpec`. Every choice about how a labcloud guest looks in libvirt is made here and nowhere else.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path

from agent.schemas import PortSpec, ServerSpec
from agent.virt.domain_xml import CdromSpec, DiskSpec, DomainSpec, NicSpec, SerialSpec

log = logging.getLogger(__name__)

# Server ids are UUIDs in practice; anything else still gets a stable libvirt uuid derived from it.
_UUID_NAMESPACE = uuid.UUID("0d5ac9f1-3c0e-5b7e-9a52-6c61626c6f75")

# TCG translation-block cache: QEMU's default (1 GiB) dominates a small guest's RSS. A quarter of guest RAM,
# 32..256 MiB, matches what was measured to work (32 for a 128 MiB guest, 128 for a 512 MiB Debian guest).
_TB_CACHE_MIN_MIB = 32
_TB_CACHE_MAX_MIB = 256


def design_domain(
    spec: ServerSpec,
    *,
    accelerator: str,
    root_disk: Path,
    seed: Path | None,
    console_log: Path,
    nic_names: Callable[[PortSpec], tuple[str, str]],
) -> DomainSpec:
    """Decide the domain for `spec` on this host.

    `accelerator` is "kvm" or "tcg"; `seed` is the NoCloud ISO or None; `nic_names(port)` returns the
    (bridge, tap) names the network layer uses for that port. NICs keep the order of `spec.ports`, so the
    first port is the guest's eth0.
    """
    if accelerator not in ("kvm", "tcg"):
        raise ValueError(f"accelerator must be 'kvm' or 'tcg', not {accelerator!r}")
    kvm = accelerator == "kvm"
    mtus = {subnet.id: subnet.mtu for network in spec.networks for subnet in network.subnets}
    nics = []
    for port in spec.ports:
        bridge, tap = nic_names(port)
        nics.append(NicSpec(bridge=bridge, tap=tap, mac=port.mac, mtu=mtus.get(port.subnet_id)))
    return DomainSpec(
        server_id=spec.id,
        uuid=libvirt_uuid(spec.id),
        project_id=spec.project_id,
        server_name=spec.name,
        domain_type="kvm" if kvm else "qemu",
        memory_mib=spec.ram_mib,
        vcpus=spec.vcpus,
        disks=(DiskSpec(source=root_disk, target="vda"),),
        cdroms=(CdromSpec(source=seed),) if seed is not None else (),
        nics=tuple(nics),
        serial=SerialSpec(path=console_log),
        cpu_passthrough=kvm,
        tb_cache_mib=None if kvm else tb_cache_mib(spec.ram_mib),
    )


def libvirt_uuid(server_id: str) -> str:
    """The domain uuid: the server id itself when it is a UUID, else a stable uuid5 of it."""
    try:
        return str(uuid.UUID(server_id))
    except ValueError:
        derived = str(uuid.uuid5(_UUID_NAMESPACE, server_id))
        log.debug("server %s: id is not a UUID, domain uuid %s derived from it", server_id, derived)
        return derived


def tb_cache_mib(ram_mib: int) -> int:
    """TCG translation cache size for a guest with `ram_mib` of RAM."""
    return max(_TB_CACHE_MIN_MIB, min(_TB_CACHE_MAX_MIB, ram_mib // 4))
