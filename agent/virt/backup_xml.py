"""The `<domainbackup>` document for a push-mode full backup: pure, no libvirt.

Every disk of the domain is named explicitly: the chosen ones with their target file, all others (other
volumes, the seed cdrom) with `backup='no'`, because libvirt backs up every disk that is not mentioned.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path


def domain_disk_targets(domain_xml: str) -> dict[str, str | None]:
    """Target dev -> source file of every `<disk>` in a domain's XML (None for a disk without a file)."""
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError as exc:
        raise ValueError(f"domain XML does not parse: {exc}") from exc
    disks: dict[str, str | None] = {}
    for disk in root.iterfind("devices/disk"):
        target = disk.find("target")
        if target is None or not target.get("dev"):
            continue
        source = disk.find("source")
        disks[str(target.get("dev"))] = source.get("file") if source is not None else None
    return disks


def render_backup_xml(all_targets: list[str], copies: Mapping[str, Path]) -> str:
    """A push-mode backup of the disks in `copies` (target dev -> new qcow2 file), skipping the rest."""
    unknown = sorted(set(copies) - set(all_targets))
    if unknown:
        raise ValueError(f"no such disks: {', '.join(unknown)}")
    root = ET.Element("domainbackup", mode="push")
    disks = ET.SubElement(root, "disks")
    for target in all_targets:
        if target not in copies:
            ET.SubElement(disks, "disk", name=target, backup="no")
            continue
        disk = ET.SubElement(disks, "disk", name=target, backup="yes", type="file")
        ET.SubElement(disk, "driver", type="qcow2")
        ET.SubElement(disk, "target", file=str(copies[target]))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")
