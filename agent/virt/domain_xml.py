"""Libvirt domain XML for a labcloud server: frozen spec dataclasses and a renderer, with no policy.

What goes into a spec (which accelerator, how big a cache, which bridge) is decided in `designer.py`; this
module only renders a finished spec with ElementTree, and reads labcloud's metadata back out of a domain.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

METADATA_NS = "https://labcloud.dev/xmlns/domain/1"
METADATA_PREFIX = "lc"
DOMAIN_PREFIX = "lc-"

# Metadata keys in the order they are written: dict key -> element name in METADATA_NS.
_METADATA_FIELDS = {"server_id": "id", "project_id": "project", "name": "name"}

ET.register_namespace(METADATA_PREFIX, METADATA_NS)


def domain_name(server_id: str) -> str:
    """The libvirt domain name for a server; every libvirt lookup in the agent goes through it."""
    return f"{DOMAIN_PREFIX}{server_id}"


@dataclass(frozen=True)
class DiskSpec:
    """A file-backed virtio disk (the root disk, later also hot-plugged volumes)."""

    source: Path
    target: str  # vda, vdb, ...
    format: str = "qcow2"
    bus: str = "virtio"
    serial: str | None = None  # shows up in the guest as /sys/block/vdX/serial


@dataclass(frozen=True)
class CdromSpec:
    """A read-only ISO on an IDE cdrom, so it never takes a virtio name a volume should get."""

    source: Path
    target: str = "hdc"
    bus: str = "ide"


@dataclass(frozen=True)
class NicSpec:
    """A NIC plugged into an existing Linux bridge through a tap whose name the caller chose."""

    bridge: str
    tap: str
    mac: str
    model: str = "virtio"
    mtu: int | None = None


@dataclass(frozen=True)
class SerialSpec:
    """Serial port 0 written to a file; `append` keeps earlier boots' output when the domain restarts."""

    path: Path
    append: bool = True


@dataclass(frozen=True)
class DomainSpec:
    server_id: str
    uuid: str
    project_id: str
    server_name: str
    domain_type: Literal["qemu", "kvm"]
    memory_mib: int
    vcpus: int
    disks: tuple[DiskSpec, ...]
    serial: SerialSpec
    cdroms: tuple[CdromSpec, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    machine: str = "pc"
    cpu_passthrough: bool = False
    tb_cache_mib: int | None = None  # TCG translation cache; only meaningful for domain_type "qemu"
    rng_device: str = "/dev/urandom"
    balloon_stats_period: int | None = 10  # seconds; None disables the guest memory stats


def render_domain(spec: DomainSpec) -> str:
    """Render the spec as an indented libvirt `<domain>` document."""
    root = ET.Element("domain", type=spec.domain_type)
    _text(root, "name", domain_name(spec.server_id))
    _text(root, "uuid", spec.uuid)
    root.append(_metadata(spec))
    _text(root, "memory", str(spec.memory_mib), unit="MiB")
    _text(root, "vcpu", str(spec.vcpus))

    os_el = ET.SubElement(root, "os")
    _text(os_el, "type", "hvm", arch="x86_64", machine=spec.machine)
    ET.SubElement(os_el, "boot", dev="hd")

    features = ET.SubElement(root, "features")
    ET.SubElement(features, "acpi")
    if spec.tb_cache_mib is not None:
        tcg = ET.SubElement(features, "tcg")
        _text(tcg, "tb-cache", str(spec.tb_cache_mib), unit="MiB")
    if spec.cpu_passthrough:
        ET.SubElement(root, "cpu", mode="host-passthrough")
    ET.SubElement(root, "clock", offset="utc")
    _text(root, "on_poweroff", "destroy")
    _text(root, "on_reboot", "restart")
    _text(root, "on_crash", "destroy")

    devices = ET.SubElement(root, "devices")
    for disk in spec.disks:
        devices.append(_disk(disk))
    for cdrom in spec.cdroms:
        devices.append(_cdrom(cdrom))
    for nic in spec.nics:
        devices.append(_nic(nic))
    devices.append(_serial(spec.serial))
    rng = ET.SubElement(devices, "rng", model="virtio")
    _text(rng, "backend", spec.rng_device, model="random")
    balloon = ET.SubElement(devices, "memballoon", model="virtio")
    if spec.balloon_stats_period is not None:
        ET.SubElement(balloon, "stats", period=str(spec.balloon_stats_period))

    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def render_disk_device(disk: DiskSpec) -> str:
    """One `<disk>` element on its own, for hot-plugging a volume into a running domain."""
    element = _disk(disk)
    ET.indent(element)
    return ET.tostring(element, encoding="unicode")


def disk_target(disk_xml: str) -> str:
    """The target device (`vdb`) of one `<disk>` element."""
    target = _parse(disk_xml).find("target")
    if target is None or not target.get("dev"):
        raise ValueError("disk XML has no target device")
    return str(target.get("dev"))


def disk_source(disk_xml: str) -> str | None:
    """The source file of one `<disk>` element, or None if it has none."""
    source = _parse(disk_xml).find("source")
    return source.get("file") if source is not None else None


def find_disk_device(domain_xml: str, target: str) -> str | None:
    """The domain's `<disk>` element on `target`, as XML, or None."""
    element = _find_disk(_parse(domain_xml), target)
    return ET.tostring(element, encoding="unicode") if element is not None else None


def with_disk_device(domain_xml: str, disk_xml: str) -> str:
    """The domain XML with one more `<disk>` (after the existing disks), for a shut-off domain's config."""
    root = _parse(domain_xml)
    devices = root.find("devices")
    if devices is None:
        raise ValueError("domain XML has no <devices>")
    children = list(devices)
    last_disk = max((i for i, child in enumerate(children) if child.tag == "disk"), default=-1)
    devices.insert(last_disk + 1, _parse(disk_xml))
    return ET.tostring(root, encoding="unicode")


def without_disk_device(domain_xml: str, target: str) -> str:
    """The domain XML without its `<disk>` on `target` (unchanged if there is none)."""
    root = _parse(domain_xml)
    devices = root.find("devices")
    element = _find_disk(root, target)
    if devices is not None and element is not None:
        devices.remove(element)
    return ET.tostring(root, encoding="unicode")


def _parse(xml: str) -> ET.Element:
    try:
        return ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ValueError(f"XML does not parse: {exc}") from exc


def _find_disk(root: ET.Element, target: str) -> ET.Element | None:
    for disk in root.iterfind("devices/disk"):
        element = disk.find("target")
        if element is not None and element.get("dev") == target:
            return disk
    return None


def parse_labcloud_metadata(xml: str) -> dict[str, str] | None:
    """Read labcloud's metadata (`server_id`, `project_id`, `name`) from a domain's XML.

    Returns None for a domain labcloud did not make (no labcloud element, or one without a server id), so
    callers can skip foreign domains on a shared libvirtd. Raises ValueError if the XML does not parse.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ValueError(f"domain XML does not parse: {exc}") from exc
    element = root.find(f"metadata/{{{METADATA_NS}}}server")
    if element is None:
        return None
    values: dict[str, str] = {}
    for key, tag in _METADATA_FIELDS.items():
        child = element.find(f"{{{METADATA_NS}}}{tag}")
        if child is not None and child.text is not None:
            values[key] = child.text
    return values if values.get("server_id") else None


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    element.text = text
    return element


def _metadata(spec: DomainSpec) -> ET.Element:
    metadata = ET.Element("metadata")
    server = ET.SubElement(metadata, f"{{{METADATA_NS}}}server")
    values = {"server_id": spec.server_id, "project_id": spec.project_id, "name": spec.server_name}
    for key, tag in _METADATA_FIELDS.items():
        _text(server, f"{{{METADATA_NS}}}{tag}", values[key])
    return metadata


def _disk(disk: DiskSpec) -> ET.Element:
    element = ET.Element("disk", type="file", device="disk")
    ET.SubElement(element, "driver", name="qemu", type=disk.format)
    ET.SubElement(element, "source", file=str(disk.source))
    ET.SubElement(element, "target", dev=disk.target, bus=disk.bus)
    if disk.serial is not None:
        _text(element, "serial", disk.serial)
    return element


def _cdrom(cdrom: CdromSpec) -> ET.Element:
    element = ET.Element("disk", type="file", device="cdrom")
    ET.SubElement(element, "driver", name="qemu", type="raw")
    ET.SubElement(element, "source", file=str(cdrom.source))
    ET.SubElement(element, "target", dev=cdrom.target, bus=cdrom.bus)
    ET.SubElement(element, "readonly")
    return element


def _nic(nic: NicSpec) -> ET.Element:
    element = ET.Element("interface", type="bridge")
    ET.SubElement(element, "source", bridge=nic.bridge)
    ET.SubElement(element, "mac", address=nic.mac)
    ET.SubElement(element, "model", type=nic.model)
    ET.SubElement(element, "target", dev=nic.tap)
    if nic.mtu is not None:
        ET.SubElement(element, "mtu", size=str(nic.mtu))
    return element


def _serial(serial: SerialSpec) -> ET.Element:
    element = ET.Element("serial", type="file")
    ET.SubElement(element, "source", path=str(serial.path), append="on" if serial.append else "off")
    ET.SubElement(element, "target", port="0")
    return element
