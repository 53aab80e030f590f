"""Resize and rebuild through AgentService over libvirt's test driver, with real qcow2 disks and seeds: what the
controller relies on when it repeats a call after an agent restart (idempotency, no second disk), refusals
that change nothing, and an undone resize."""

from __future__ import annotations

import hashlib
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from agent.errors import AgentFailure
from agent.schemas import ImageRef
from agent.storage.disks import image_info
from agent.storage.seed import read_seed
from tests.agent.test_service import Rig, backing_file, make_base_image, make_spec

GIB = 1024**3


def _domain(rig: Rig, server_id: str) -> tuple[int, int]:
    root = ET.fromstring(rig.host.domain_xml(server_id, inactive=True))
    return int(root.findtext("vcpu") or 0), int(root.findtext("memory") or 0) // 1024


def test_resize_redefines_grows_and_is_idempotent(rig: Rig) -> None:
    spec = make_spec(rig.image)
    rig.service.ensure_server(spec)
    root = rig.state / "instances" / spec.id / "root.qcow2"
    bigger = spec.model_copy(update={"vcpus": 2, "ram_mib": 256, "root_disk_gib": 3})

    state = rig.service.resize_server(bigger)
    assert state.power == "running"
    assert _domain(rig, spec.id) == (2, 256)
    assert image_info(root).virtual_size == 3 * GIB
    assert backing_file(root).endswith(".qcow2")  # still an overlay on the same base
    stored = rig.stored_spec(spec.id)
    assert (stored.vcpus, stored.ram_mib, stored.root_disk_gib) == (2, 256, 3)
    assert rig.service.resize_server(bigger).power == "running"  # a repeated call changes nothing

    # A stopped server is resized and stays stopped.
    stopped = bigger.model_copy(update={"vcpus": 1, "ram_mib": 192, "power": "shutoff"})
    assert rig.service.resize_server(stopped).power == "shutoff"
    assert _domain(rig, spec.id) == (1, 192)


def test_resize_refuses_to_shrink_and_changes_nothing(rig: Rig) -> None:
    spec = make_spec(rig.image).model_copy(update={"root_disk_gib": 2})
    rig.service.ensure_server(spec)
    with pytest.raises(AgentFailure) as info:
        rig.service.resize_server(spec.model_copy(update={"vcpus": 2, "root_disk_gib": 1}))
    assert info.value.status == 400 and "cannot shrink" in info.value.message
    assert _domain(rig, spec.id) == (1, 128)
    assert rig.stored_spec(spec.id) == spec
    assert rig.host.power_state(spec.id) == "running"


def test_failed_resize_is_undone(rig: Rig) -> None:
    spec = make_spec(rig.image)
    rig.service.ensure_server(spec)
    # libvirt refuses a domain with 0 MiB of memory: the redefinition fails after the guest was stopped.
    with pytest.raises(AgentFailure):
        rig.service.resize_server(spec.model_copy(update={"ram_mib": 0}))
    assert _domain(rig, spec.id) == (1, 128)
    assert rig.stored_spec(spec.id) == spec
    assert rig.host.power_state(spec.id) == "running"


def test_rebuild_replaces_root_and_seed_once_per_rebuild_id(rig: Rig, tmp_path: Path) -> None:
    spec = make_spec(rig.image).model_copy(update={"ssh_keys": ["ssh-ed25519 AAAAold old"]})
    rig.service.ensure_server(spec)
    paths = rig.state / "instances" / spec.id
    first_inode = (paths / "root.qcow2").stat().st_ino

    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = make_base_image(other_dir)
    subprocess.run(["qemu-img", "resize", "-q", str(other_dir / "base.qcow2"), "96M"], check=True)
    other = ImageRef(id="img-other", checksum=_sha256(other_dir / "base.qcow2"), url=other.url)
    new = spec.model_copy(update={"image": other, "ssh_keys": ["ssh-ed25519 AAAAnew new"]})

    assert rig.service.rebuild_server(new, "job-1").power == "running"
    root = paths / "root.qcow2"
    second_inode = root.stat().st_ino
    assert second_inode != first_inode
    assert backing_file(root).endswith(f"{other.checksum}.qcow2")
    meta = read_seed(paths / "seed.iso")["meta-data"]
    assert "AAAAnew" in meta and "AAAAold" not in meta and f"{spec.id}-job-1" in meta
    assert {p.name for p in paths.iterdir()} - {"console.log"} == {"rebuild.id", "root.qcow2", "seed.iso"}
    assert rig.stored_spec(spec.id).image.id == "img-other"

    # The same rebuild again (a retry after an agent restart) makes no second disk.
    assert rig.service.rebuild_server(new, "job-1").power == "running"
    assert root.stat().st_ino == second_inode
    # A later ensure of the same spec (the reconciler) keeps the new disk.
    rig.service.ensure_server(new)
    assert root.stat().st_ino == second_inode


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
