"""Changing an existing server in place: resize (new vCPUs, memory, a larger root disk) and rebuild (a new root
disk from an image, a new seed: reinstall and change OS).

Both run with the guest stopped and are idempotent, so the controller can repeat a call that an agent restart
cut off: a resize compares the stored spec and the root disk with the wanted ones and redoes only what is
missing; a rebuild is keyed by the controller's `rebuild_id` (its job id), recorded once the new disks are in
place, so a repeated call after that point only redefines and starts the domain.

Data volumes are never touched: the domain is redefined with the volumes the stored spec attaches, and the guest
is shut down through ACPI (destroyed only after the timeout) so it flushes what it wrote to them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path

from agent.errors import NotFound, StorageError, VirtError
from agent.schemas import PortSpec, ServerSpec, ServerState, VolumeAttachment
from agent.storage.disks import create_overlay, grow_volume, image_info, remove_disk
from agent.storage.images import ImageCache
from agent.storage.layout import InstancePaths, instance_paths
from agent.storage.seed import build_seed, dhcp_network_config
from agent.virt.designer import design_domain
from agent.virt.domain_xml import DiskSpec, render_domain
from agent.virt.host import LibvirtHost

log = logging.getLogger(__name__)

GIB = 1024**3
_ACTIVE = ("running", "paused")
REBUILD_MARKER = "rebuild.id"  # in the instance directory: the last rebuild whose disks are in place


class ShrinkRefused(StorageError):
    code = "Agent.0400"
    status = 400


@dataclasses.dataclass
class Reshaper:
    """Resize and rebuild of one server at a time; the caller holds that server's lock."""

    state_dir: Path
    host: LibvirtHost
    images: ImageCache
    get_spec: Callable[[str], ServerSpec | None]
    put_spec: Callable[[ServerSpec], None]
    accelerator: str
    acpi_timeout: float
    nic_names: Callable[[PortSpec], tuple[str, str]]
    volume_disk: Callable[[VolumeAttachment], DiskSpec]

    # ---- resize ---------------------------------------------------------------------------------------------

    def resize(self, spec: ServerSpec) -> ServerState:
        """Give the server `spec`'s vCPUs, memory and root size (never smaller), in `spec.power` afterwards."""
        sid = spec.id
        stored, power = self._current(sid)
        spec = self._with_volumes(spec, stored)
        paths = instance_paths(self.state_dir, sid)
        current_size = image_info(paths.root_disk, fmt="qcow2").virtual_size
        wanted_size = spec.root_disk_gib * GIB
        if wanted_size < current_size:
            raise ShrinkRefused(
                f"server {sid}: the root disk is {current_size // GIB} GiB; it cannot shrink to "
                f"{spec.root_disk_gib} GiB"
            )
        # The stored spec is written after the domain is redefined, so matching vCPUs and memory there mean the
        # definition is done too: a repeated call only settles the power state.
        if (stored.vcpus, stored.ram_mib) == (spec.vcpus, spec.ram_mib) and current_size == wanted_size:
            if stored != spec:
                self.put_spec(spec)
            self._ensure_power(sid, spec.power, power)
            log.info(
                "server %s: already %s vCPUs / %s MiB / %s GiB",
                sid,
                spec.vcpus,
                spec.ram_mib,
                spec.root_disk_gib,
            )
            return self._state(sid)
        old_xml = self.host.domain_xml(sid, inactive=True)
        self._stop(sid, power)
        try:
            if wanted_size != current_size:
                grow_volume(paths.root_disk, spec.root_disk_gib)  # offline: the guest is stopped
            self._define(spec, paths)
            self.put_spec(spec)
            self._ensure_power(sid, spec.power, "shutoff")
        except Exception:
            self._undo_resize(sid, stored, old_xml, was=power)
            raise
        log.info(
            "server %s resized to %s vCPUs / %s MiB / %s GiB root (%s)",
            sid,
            spec.vcpus,
            spec.ram_mib,
            spec.root_disk_gib,
            spec.power,
        )
        return self._state(sid)

    def _undo_resize(self, sid: str, stored: ServerSpec, old_xml: str, *, was: str) -> None:
        """Back to the old definition and power (a root disk that already grew stays larger: that is harmless)."""
        try:
            self.host.destroy(sid)
            self.host.define(old_xml)
            self.put_spec(stored)
            if was in _ACTIVE:
                self.host.start(sid)
            log.info("server %s: resize undone, back to %s vCPUs / %s MiB", sid, stored.vcpus, stored.ram_mib)
        except Exception:  # the controller sees the original error and marks the server ERROR
            log.exception("server %s: undoing the resize failed", sid)

    # ---- rebuild ------------------------------------------------------------------------------------------

    def rebuild(self, spec: ServerSpec, rebuild_id: str) -> ServerState:
        """Replace the root disk with a fresh overlay of `spec.image` and the seed with a new one; keep the rest.

        The old root disk is gone once this returns (the new file is renamed over it). Ports, volumes and the
        domain's identity stay; the guest boots as a new instance (a new instance id), so cloud-init runs again.
        """
        sid = spec.id
        stored, power = self._current(sid)
        spec = self._with_volumes(spec, stored)
        paths = instance_paths(self.state_dir, sid)
        marker = paths.dir / REBUILD_MARKER
        if _read(marker) == rebuild_id:  # a repeated call: the disks, spec and domain are already new
            self._ensure_power(sid, spec.power, power)
            return self._state(sid)
        base = self.images.ensure(spec.image)
        self._stop(sid, power)
        self._replace_disks(spec, paths, base, rebuild_id, restart=power in _ACTIVE)
        self.put_spec(spec)
        self._define(spec, paths)
        _write_atomically(marker, rebuild_id)
        log.info("server %s: new root disk from image %s (rebuild %s)", sid, spec.image.id, rebuild_id)
        self._ensure_power(sid, spec.power, "shutoff")
        return self._state(sid)

    def _replace_disks(
        self, spec: ServerSpec, paths: InstancePaths, base: Path, rebuild_id: str, *, restart: bool
    ) -> None:
        new_root = paths.dir / "root.next.qcow2"
        new_seed = paths.dir / "seed.next.iso"
        try:
            remove_disk(new_root)  # a leftover of an attempt cut short: never holds anything of value
            create_overlay(base, new_root, spec.root_disk_gib)
            new_seed.unlink(missing_ok=True)
            build_seed(
                new_seed,
                instance_id=f"{spec.id}-{rebuild_id[:12]}",
                hostname=spec.hostname,
                ssh_keys=spec.ssh_keys,
                admin_pass=spec.admin_pass,
                user_data=spec.user_data,
                network_config=dhcp_network_config([port.mac for port in spec.ports]),
            )
        except Exception:
            remove_disk(new_root)
            new_seed.unlink(missing_ok=True)
            if restart:  # nothing was replaced: the old system comes back as it was
                try:
                    self.host.start(spec.id)
                except VirtError:
                    log.exception("server %s: restarting after a failed rebuild failed", spec.id)
            raise
        os.replace(new_seed, paths.seed)
        os.replace(new_root, paths.root_disk)  # the old overlay goes with this rename

    # ---- helpers -------------------------------------------------------------------------------------------

    def _current(self, sid: str) -> tuple[ServerSpec, str]:
        stored = self.get_spec(sid)
        power = self.host.power_state(sid)
        if stored is None or power == "missing":
            raise NotFound(f"server {sid} not found on this host")
        return stored, power

    @staticmethod
    def _with_volumes(spec: ServerSpec, stored: ServerSpec) -> ServerSpec:
        if spec.volumes is None:
            return spec.model_copy(update={"volumes": stored.volumes})
        return spec

    def _stop(self, sid: str, power: str) -> None:
        if power in _ACTIVE:
            self.host.shutdown(sid, timeout=self.acpi_timeout)

    def _define(self, spec: ServerSpec, paths: InstancePaths) -> None:
        domain = design_domain(
            spec,
            accelerator=self.accelerator,
            root_disk=paths.root_disk,
            seed=paths.seed,
            console_log=paths.console_log,
            nic_names=self.nic_names,
        )
        extra = tuple(self.volume_disk(att) for att in spec.volumes or [])
        self.host.define(render_domain(dataclasses.replace(domain, disks=domain.disks + extra)))

    def _ensure_power(self, sid: str, wanted: str, power: str) -> None:
        if wanted == "running" and power not in _ACTIVE:
            self.host.start(sid)
        elif wanted == "shutoff" and power in _ACTIVE:
            self.host.shutdown(sid, timeout=self.acpi_timeout)

    def _state(self, sid: str) -> ServerState:
        return ServerState(id=sid, power=self.host.power_state(sid), accelerator=self.accelerator)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
