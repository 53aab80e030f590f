"""Agent orchestration: makes the host match the desired servers the controller PUTs.

Imports no libvirt, pyroute2 or qemu-img code of its own: it drives the virt, storage and net layers. The
desired spec of every server is kept as JSON under `<state>/specs/`, so after a restart the agent rebuilds its
networks and firewall from those files together with what libvirt reports.

Locking: one lock per server id serializes operations on that server; one global lock serializes everything
that looks at all servers at once (networks, DHCP, firewall). A server lock is always taken before the global
one.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from agent.backups import BackupAgent
from agent.config import AgentSettings
from agent.errors import AgentFailure, Conflict, NetworkError, NotFound, StorageError, VirtError
from agent.net.external import ExternalConfig
from agent.net.names import bridge_name, tap_name
from agent.net.network import HostNetwork, Network, NullNetwork
from agent.net.overlay import resolve_underlay
from agent.net.ports import BoundPort
from agent.reshape import Reshaper
from agent.schemas import (
    DiskExport,
    ExternalSpec,
    HostInfo,
    NetworkSpec,
    OverlaySpec,
    PortSpec,
    SecurityGroupSpec,
    ServerAction,
    ServerSpec,
    ServerState,
    SnapshotSpec,
    SnapshotState,
    VolumeAttachment,
    VolumeRollback,
    VolumeSource,
    VolumeSpec,
    VolumeState,
)
from agent.storage.backups import sweep_partials
from agent.storage.disks import (
    convert_to_qcow2,
    create_overlay,
    create_volume,
    grow_volume,
    image_info,
    remove_disk,
)
from agent.storage.exports import describe_export, remove_export
from agent.storage.images import ImageCache
from agent.storage.layout import (
    ensure_instance_dir,
    ensure_snapshots_dir,
    ensure_traversable_dir,
    ensure_volumes_dir,
    export_path,
    image_cache_dir,
    instance_ids,
    instance_paths,
    remove_instance_dir,
    snapshot_path,
    volume_ids,
    volume_path,
)
from agent.storage.seed import build_seed, dhcp_network_config
from agent.storage.snapshots import copy_volume, fill_volume, publish, temp_path
from agent.virt.accel import detect_accelerator
from agent.virt.designer import design_domain
from agent.virt.domain_xml import DiskSpec, render_disk_device, render_domain
from agent.virt.host import LibvirtHost

log = logging.getLogger(__name__)

SERVER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_SERVER_ID = re.compile(SERVER_ID_PATTERN)
_ACTIVE = ("running", "paused")
GIB = 1024**3
CONSOLE_TAIL_BYTES = 1024 * 1024  # a console log grows without bound; never read more than its last MiB


class InvalidRequest(AgentFailure):
    code = "Agent.0400"
    status = 400


def check_server_id(server_id: str) -> None:
    """Server ids name files and domains: one safe path component."""
    if not _SERVER_ID.fullmatch(server_id):
        raise InvalidRequest(f"invalid server id {server_id!r}")


class SpecStore:
    """Desired server specs, one JSON file per server, replaced atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, server_id: str) -> Path:
        return self.directory / f"{server_id}.json"

    def _tombstone(self, server_id: str) -> Path:
        return self.directory / f"{server_id}.deleting"

    def mark_deleting(self, server_id: str) -> None:
        """Record that a delete began, so a restart in the middle does not bring the server back."""
        if self._path(server_id).exists():
            self._tombstone(server_id).touch()

    def deleting(self, server_id: str) -> bool:
        return self._tombstone(server_id).exists()

    def get(self, server_id: str) -> ServerSpec | None:
        try:
            return ServerSpec.model_validate_json(self._path(server_id).read_bytes())
        except FileNotFoundError:
            return None

    def put(self, spec: ServerSpec) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{spec.id}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(spec.model_dump_json(indent=2))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path(spec.id))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._tombstone(spec.id).unlink(missing_ok=True)  # the newest wish wins over an unfinished delete

    def delete(self, server_id: str) -> None:
        self._path(server_id).unlink(missing_ok=True)
        self._tombstone(server_id).unlink(missing_ok=True)

    def all(self) -> list[ServerSpec]:
        specs = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                specs.append(ServerSpec.model_validate_json(path.read_bytes()))
            except (OSError, ValidationError) as exc:  # one bad file must not stop the whole host
                log.error("ignoring unreadable spec %s: %s", path, exc)
        return specs


class Rollback:
    """Undo actions of one call, registered before each change is made and run newest first on failure."""

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        self._actions: list[tuple[str, Callable[[], object]]] = []

    def add(self, what: str, action: Callable[[], object]) -> None:
        self._actions.append((what, action))

    def run(self) -> None:
        for what, action in reversed(self._actions):
            try:
                action()
                log.info("server %s: rolled back: %s", self.server_id, what)
            except Exception:  # keep undoing the rest; the leftover is logged for an operator
                log.exception("server %s: rollback step failed: %s", self.server_id, what)
        self._actions.clear()


@contextmanager
def step(server_id: str, name: str, default_error: type[AgentFailure]) -> Iterator[None]:
    """Name the step in whatever error escapes it, keeping the error's type, code and status; time it."""
    started = time.perf_counter()
    try:
        yield
        log.debug("server %s: %s took %.1f ms", server_id, name, (time.perf_counter() - started) * 1000)
    except AgentFailure as exc:
        raise _renamed(exc, f"server {server_id}: {name} failed: {exc.message}") from exc
    except Exception as exc:
        raise default_error(f"server {server_id}: {name} failed: {type(exc).__name__}: {exc}") from exc


def _renamed(exc: AgentFailure, message: str) -> AgentFailure:
    try:
        clone = copy.copy(exc)
    except Exception:  # a subclass with an unusual constructor: keep code and status on a plain failure
        clone = AgentFailure(message, code=exc.code)
        clone.status = exc.status
    clone.message = message
    clone.args = (message,)
    return clone


class AgentService:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        host: LibvirtHost,
        network: Network,
        images: ImageCache,
        accelerator: str,
    ) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir
        self.accelerator = accelerator
        self._host = host
        self._network = network
        self._images = images
        self._specs = SpecStore(settings.state_dir / "specs")
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._sync_lock = threading.RLock()
        self._idle_networks: dict[str, float] = {}  # VPC -> when its last port on this host went (monotonic)
        self.backups = BackupAgent(self)

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> AgentService:
        state = settings.state_dir
        state.mkdir(parents=True, exist_ok=True)
        accelerator = detect_accelerator(settings.accelerator, cache_file=state / "accelerator.json")
        network: Network = (
            HostNetwork(
                state,
                underlay_ip=resolve_underlay(settings.underlay_ip, settings.controller_url),
                external=ExternalConfig.from_settings(
                    settings.external_dev, settings.external_ip, settings.external_gateway
                ),
            )
            if settings.network_driver == "linux"
            else NullNetwork()
        )
        host = LibvirtHost(settings.libvirt_uri)
        log.info(
            "agent service on %s: accelerator %s, network driver %s",
            settings.libvirt_uri,
            accelerator,
            settings.network_driver,
        )
        return cls(
            settings,
            host=host,
            network=network,
            images=ImageCache(image_cache_dir(state), bearer_token=settings.join_token.get_secret_value()),
            accelerator=accelerator,
        )

    def close(self) -> None:
        self._host.close()
        self._images.close()

    # ---- lifecycle of the service -------------------------------------------------------------------------

    def check(self) -> None:
        """Fail early when the host cannot run the network layer (missing tools, modules, privileges)."""
        self._network.check()

    def resync(self) -> None:
        """Re-ensure networks, DHCP and firewall for every stored spec; run once at start-up."""
        specs = self._specs.all()
        sweep_partials(self.state_dir)  # copies and downloads a killed agent left half-written
        networks = _newest_networks(specs)
        with self._sync_lock:
            for net in networks.values():
                self._network.ensure_network(net)
            self._sync_ports()
            self._delete_orphan_networks()
        domains = self._host.list_servers()
        missing = [spec for spec in specs if spec.id not in domains]
        if missing:
            log.warning("stored specs without a libvirt domain: %s", ", ".join(s.id for s in missing))
        restored = sum(self._restore(spec) for spec in missing)
        log.info(
            "resynced %d servers (%d domains restored) and %d networks from stored specs",
            len(specs),
            restored,
            len(networks),
        )

    def _restore(self, spec: ServerSpec) -> bool:
        """Bring back a server whose spec survived but whose domain did not: an agent killed between storing the
        spec and defining the domain, or a hypervisor that lost its definitions (libvirt's test driver forgets
        everything with its process). The spec is what the controller wants, so the host is made to match it;
        unless a delete of it had begun, which the controller's retry finishes."""
        if self._specs.deleting(spec.id):
            log.info("server %s: its delete was interrupted; left for the controller to finish", spec.id)
            return False
        try:
            self.ensure_server(spec)
        except Exception:  # one server must not keep the host from starting; the reconciler sees it missing
            log.exception("server %s: restoring its domain from the stored spec failed", spec.id)
            return False
        return True

    # ---- servers -------------------------------------------------------------------------------------------

    def ensure_server(self, spec: ServerSpec) -> ServerState:
        """Make the host match `spec`. Idempotent; a failure undoes what this call made and names the step."""
        check_server_id(spec.id)
        with self._server_lock(spec.id):
            stored = self._specs.get(spec.id) if spec.volumes is None else None
            if stored is not None and stored.volumes:  # volumes left to the host: keep the ones it attached
                spec = spec.model_copy(update={"volumes": stored.volumes})
            rollback = Rollback(spec.id)
            try:
                self._ensure(spec, rollback)
            except BaseException:
                rollback.run()
                raise
            state = self._state(spec.id)
        log.info("server %s ensured: %s", spec.id, state.power)
        return state

    def _ensure(self, spec: ServerSpec, rollback: Rollback) -> None:
        sid = spec.id
        paths = instance_paths(self.state_dir, sid)
        power = self._host.power_state(sid)

        with step(sid, "fetching image", StorageError):
            base = self._images.ensure(spec.image)

        with step(sid, "creating root disk", StorageError):
            if not paths.dir.exists():
                rollback.add("remove instance directory", lambda: remove_instance_dir(paths))
            ensure_instance_dir(self.state_dir, sid)
            if not paths.root_disk.exists():
                rollback.add("remove root disk", lambda: remove_disk(paths.root_disk))
            create_overlay(base, paths.root_disk, spec.root_disk_gib)

        with step(sid, "building seed", StorageError):
            # The guest reads its seed once per instance id: an existing seed stays as the guest first saw it.
            if not paths.seed.exists():
                rollback.add("remove seed", lambda: paths.seed.unlink(missing_ok=True))
                build_seed(
                    paths.seed,
                    instance_id=sid,
                    hostname=spec.hostname,
                    ssh_keys=spec.ssh_keys,
                    admin_pass=spec.admin_pass,
                    user_data=spec.user_data,
                    network_config=dhcp_network_config([port.mac for port in spec.ports]),
                )

        self._wire(spec, rollback)

        with step(sid, "defining domain", VirtError):
            if power == "missing":
                domain = design_domain(
                    spec,
                    accelerator=self.accelerator,
                    root_disk=paths.root_disk,
                    seed=paths.seed,
                    console_log=paths.console_log,
                    nic_names=_nic_names,
                )
                extra = tuple(self._volume_disk(att) for att in spec.volumes or [])
                xml = render_domain(dataclasses.replace(domain, disks=domain.disks + extra))
                log.debug("server %s domain XML:\n%s", sid, xml)
                rollback.add("undefine domain", lambda: self._host.undefine(sid))
                self._host.define(xml)
                power = "shutoff"

        with step(sid, "starting", VirtError):
            if spec.power == "running" and power in ("shutoff", "crashed"):
                rollback.add("destroy domain", lambda: self._host.destroy(sid))
                self._host.start(sid)
            elif spec.power == "shutoff" and power in _ACTIVE:
                self._stop(sid, hard=False)

    def _wire(self, spec: ServerSpec, rollback: Rollback) -> None:
        """Store the spec, then plug its networks and ports (DHCP and firewall of all ports on this host)."""
        sid = spec.id
        previous = self._specs.get(sid)
        with self._sync_lock:
            existing = set(self._network.network_ids())
            created = [net.vpc_id for net in spec.networks if net.vpc_id not in existing]

            def restore_spec() -> None:
                if previous is None:
                    self._specs.delete(sid)
                else:
                    self._specs.put(previous)

            def resync_ports() -> None:
                with self._sync_lock:
                    self._sync_ports()

            def delete_created() -> None:
                with self._sync_lock:
                    self._delete_orphan_networks(only=created)

            # Registered in reverse: the spec is restored first, so neither undo counts this call's ports.
            rollback.add(
                f"delete networks this call created ({', '.join(created) or 'none'})", delete_created
            )
            rollback.add("re-sync ports without this spec", resync_ports)
            rollback.add("restore previous spec", restore_spec)
            with step(sid, "storing spec", StorageError):
                self._specs.put(spec)
            with step(sid, "ensuring networks", NetworkError):
                for net in spec.networks:
                    self._network.ensure_network(net)
            with step(sid, "syncing ports", NetworkError):
                self._sync_ports()

    def resize_server(self, spec: ServerSpec) -> ServerState:
        """New vCPUs, memory and a larger root disk for an existing server (see `agent.reshape`)."""
        check_server_id(spec.id)
        with self._server_lock(spec.id):
            return self._reshaper().resize(spec)

    def rebuild_server(self, spec: ServerSpec, rebuild_id: str) -> ServerState:
        """A new root disk and seed for an existing server: reinstall or change OS (see `agent.reshape`)."""
        check_server_id(spec.id)
        with self._server_lock(spec.id):
            return self._reshaper().rebuild(spec, rebuild_id)

    def _reshaper(self) -> Reshaper:
        return Reshaper(
            state_dir=self.state_dir,
            host=self._host,
            images=self._images,
            get_spec=self._specs.get,
            put_spec=self._specs.put,
            accelerator=self.accelerator,
            acpi_timeout=self.settings.acpi_timeout_seconds,
            nic_names=_nic_names,
            volume_disk=self._volume_disk,
        )

    def delete_server(self, server_id: str) -> None:
        """Remove the server and everything it owns on this host; deleting a missing server succeeds."""
        check_server_id(server_id)
        with self._server_lock(server_id):
            paths = instance_paths(self.state_dir, server_id)
            self._specs.mark_deleting(server_id)
            with step(server_id, "removing domain", VirtError):
                self._host.undefine(server_id)  # destroys a running domain first; nothing if none
            with step(server_id, "removing disks", StorageError):
                remove_disk(paths.root_disk)
                remove_instance_dir(paths)
            with self._sync_lock:
                self._specs.delete(server_id)
                with step(server_id, "unwiring ports", NetworkError):
                    self._sync_ports()
        log.info("server %s deleted", server_id)

    # ---- volumes -------------------------------------------------------------------------------------------

    def ensure_volume(self, spec: VolumeSpec) -> VolumeState:
        """Make sure the volume's qcow2 exists with at least `size_gib` GiB (its data kept). Idempotent.

        A larger size grows the volume: through libvirt while a running guest holds it, so the guest sees the
        new size at once, else with qemu-img. A smaller size than the file's is refused (StorageError).
        """
        check_server_id(spec.id)
        path = volume_path(self.state_dir, spec.id)
        with self._server_lock(_volume_key(spec.id)):
            with step(spec.id, "creating volume", StorageError):
                ensure_volumes_dir(self.state_dir)
                if spec.source is None or path.exists():
                    create_volume(path, spec.size_gib)
                elif spec.source.kind == "backup" and spec.source.backup is not None:
                    self.backups.fill_new_volume(path, spec.size_gib, spec.source.backup)
                else:
                    fill_volume(path, spec.size_gib, *self._source_file(spec.source))
            if image_info(path, fmt="qcow2").virtual_size != spec.size_gib * GIB:
                self._grow_volume(spec)
        return self.volume_state(spec.id)

    def _grow_volume(self, spec: VolumeSpec) -> None:
        holder = self._volume_holder(spec.id)
        if holder is None:
            with step(spec.id, "extending volume", StorageError):
                grow_volume(volume_path(self.state_dir, spec.id), spec.size_gib)
            return
        with self._server_lock(holder):
            attachment = next(a for a in self._require_spec(holder).volumes or [] if a.volume_id == spec.id)
            if self._host.power_state(holder) in _ACTIVE:
                with step(holder, f"extending volume {spec.id} online", VirtError):
                    self._host.grow_disk(holder, attachment.device, spec.size_gib * GIB)
            else:
                with step(spec.id, "extending volume", StorageError):
                    grow_volume(volume_path(self.state_dir, spec.id), spec.size_gib)
        log.info("volume %s extended to %s GiB (server %s)", spec.id, spec.size_gib, holder)

    def volume_state(self, volume_id: str) -> VolumeState:
        check_server_id(volume_id)
        path = volume_path(self.state_dir, volume_id)
        if not path.exists():
            raise NotFound(f"volume {volume_id} not found on this host")
        size = image_info(path, fmt="qcow2").virtual_size
        return VolumeState(id=volume_id, size_gib=size // GIB, server_id=self._volume_holder(volume_id))

    def delete_volume(self, volume_id: str) -> None:
        """Remove the volume's file; Conflict while a server on this host attaches it. A missing one is fine."""
        check_server_id(volume_id)
        with self._server_lock(_volume_key(volume_id)):
            holder = self._volume_holder(volume_id)
            if holder is not None:
                raise Conflict(f"volume {volume_id} is attached to server {holder}; detach it first")
            with step(volume_id, "removing volume", StorageError):
                remove_disk(volume_path(self.state_dir, volume_id))
        log.info("volume %s deleted", volume_id)

    # ---- snapshots -----------------------------------------------------------------------------------------

    def create_snapshot(self, spec: SnapshotSpec) -> SnapshotState:
        """Copy the volume to `<state>/snapshots/<id>.qcow2` once (a later call keeps that copy). A volume in a
        running guest is copied through libvirt's backup job, at one instant while the guest keeps writing;
        otherwise with qemu-img, holding the volume's lock so that nothing attaches it meanwhile."""
        check_server_id(spec.id)
        check_server_id(spec.volume_id)
        target = snapshot_path(self.state_dir, spec.id)
        volume = volume_path(self.state_dir, spec.volume_id)
        with self._server_lock(_volume_key(spec.volume_id)):
            if not target.exists():
                if not volume.exists():
                    raise NotFound(f"volume {spec.volume_id} not found on this host")
                ensure_snapshots_dir(self.state_dir)
                holder = self._volume_holder(spec.volume_id)
                if holder is None:
                    with step(spec.volume_id, f"copying to snapshot {spec.id}", StorageError):
                        copy_volume(volume, target)
                else:
                    with self._server_lock(holder):
                        self._snapshot_attached(holder, spec, volume, target)
        log.info("snapshot %s of volume %s ready", spec.id, spec.volume_id)
        return self.snapshot_state(spec.id)

    def _snapshot_attached(self, holder: str, spec: SnapshotSpec, volume: Path, target: Path) -> None:
        attachments = self._require_spec(holder).volumes or []
        attachment = next(a for a in attachments if a.volume_id == spec.volume_id)
        if self._host.power_state(holder) not in _ACTIVE:
            with step(spec.volume_id, f"copying to snapshot {spec.id}", StorageError):
                copy_volume(volume, target)
            return
        tmp = temp_path(target)
        try:
            with step(holder, f"copying {attachment.device} to snapshot {spec.id} online", VirtError):
                self._host.backup_disks(holder, {attachment.device: tmp})
            with step(spec.volume_id, f"storing snapshot {spec.id}", StorageError):
                publish(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def snapshot_state(self, snapshot_id: str) -> SnapshotState:
        check_server_id(snapshot_id)
        path = snapshot_path(self.state_dir, snapshot_id)
        if not path.exists():
            raise NotFound(f"snapshot {snapshot_id} not found on this host")
        return SnapshotState(id=snapshot_id, size_gib=image_info(path, fmt="qcow2").virtual_size // GIB)

    def delete_snapshot(self, snapshot_id: str) -> None:
        """Remove the snapshot's file; a missing one is already the wanted state."""
        check_server_id(snapshot_id)
        with step(snapshot_id, "removing snapshot", StorageError):
            remove_disk(snapshot_path(self.state_dir, snapshot_id))
        log.info("snapshot %s deleted", snapshot_id)

    def rollback_volume(self, volume_id: str, rollback: VolumeRollback) -> VolumeState:
        """Replace a detached volume's data with the source's (a snapshot, an image, or nothing), keeping its
        size; Conflict while a server on this host attaches it."""
        check_server_id(volume_id)
        path = volume_path(self.state_dir, volume_id)
        with self._server_lock(_volume_key(volume_id)):
            holder = self._volume_holder(volume_id)
            if holder is not None:
                raise Conflict(f"volume {volume_id} is attached to server {holder}; detach it first")
            if not path.exists():
                raise NotFound(f"volume {volume_id} not found on this host")
            size_gib = image_info(path, fmt="qcow2").virtual_size // GIB
            source = rollback.source
            what = f"{source.kind} {source.id}" if source else "an empty volume"
            with step(volume_id, f"rolling back to {what}", StorageError):
                file, fmt = self._source_file(source) if source else (None, "qcow2")
                fill_volume(path, size_gib, file, fmt, replace=True)
        log.info("volume %s rolled back to %s", volume_id, what)
        return self.volume_state(volume_id)

    def _source_file(self, source: VolumeSource) -> tuple[Path, str]:
        """The file (and its format) a volume is filled from."""
        if source.kind == "snapshot":
            path = snapshot_path(self.state_dir, source.id)
            if not path.exists():
                raise NotFound(f"snapshot {source.id} not found on this host")
            return path, "qcow2"
        if source.image is None:
            raise InvalidRequest(f"volume source image {source.id} comes without its image reference")
        with step(source.id, "fetching image", StorageError):
            return self._images.ensure(source.image), source.image.disk_format

    def attach_volume(self, server_id: str, attachment: VolumeAttachment) -> VolumeAttachment:
        """Plug an existing volume into the server: hot (live and config) when it runs, config when it is off.

        The stored spec records the attachment first, so a restart or a redefined domain keeps it. Idempotent.
        """
        check_server_id(server_id)
        check_server_id(attachment.volume_id)
        vid = attachment.volume_id
        with self._server_lock(server_id):
            spec = self._require_spec(server_id)
            path = volume_path(self.state_dir, vid)
            if not path.exists():
                raise NotFound(f"volume {vid} not found on this host")
            holder = self._volume_holder(vid)
            if holder not in (None, server_id):
                raise Conflict(f"volume {vid} is attached to server {holder}")
            current = spec.volumes or []
            for other in current:
                if other.device == attachment.device and other.volume_id != vid:
                    raise Conflict(f"server {server_id}: {attachment.device} holds volume {other.volume_id}")
                if other.volume_id == vid and other.device != attachment.device:
                    raise Conflict(f"server {server_id}: volume {vid} is already attached as {other.device}")
            power = self._host.power_state(server_id)
            if power == "missing":
                raise NotFound(f"server {server_id} has no domain on this host")
            kept = [att for att in current if att.volume_id != vid]
            self._specs.put(spec.model_copy(update={"volumes": [*kept, attachment]}))
            try:
                xml = render_disk_device(self._volume_disk(attachment))
                with step(server_id, f"attaching volume {vid}", VirtError):
                    self._host.attach_disk(server_id, xml, live=power in _ACTIVE)
            except BaseException:
                self._specs.put(spec)
                raise
        log.info("server %s: volume %s attached as %s (%s)", server_id, vid, attachment.device, power)
        return attachment

    def detach_volume(self, server_id: str, volume_id: str) -> None:
        """Unplug the volume (waiting for the guest to release it); a volume not attached is already done."""
        check_server_id(server_id)
        check_server_id(volume_id)
        with self._server_lock(server_id):
            spec = self._require_spec(server_id)
            attachment = next((a for a in spec.volumes or [] if a.volume_id == volume_id), None)
            if attachment is None:
                log.info("server %s: volume %s is not attached; nothing to detach", server_id, volume_id)
                return
            power = self._host.power_state(server_id)
            if power != "missing":
                with step(server_id, f"detaching volume {volume_id}", VirtError):
                    self._host.detach_disk(
                        server_id,
                        attachment.device,
                        live=power in _ACTIVE,
                        timeout=self.settings.acpi_timeout_seconds,
                    )
            kept = [a for a in spec.volumes or [] if a.volume_id != volume_id]
            self._specs.put(spec.model_copy(update={"volumes": kept}))
        log.info("server %s: volume %s detached from %s", server_id, volume_id, attachment.device)

    def collect_idle_networks(self) -> list[str]:
        """Delete the networks no port has used for `network_idle_seconds`; returns their VPC ids."""
        now = time.monotonic()
        deleted = []
        with self._sync_lock:
            used = {port.vpc_id for spec in self._specs.all() for port in spec.ports}
            present = set(self._network.network_ids())
            for vpc_id in present - used:
                idle_since = self._idle_networks.setdefault(vpc_id, now)
                if now - idle_since >= self.settings.network_idle_seconds:
                    self._network.delete_network(vpc_id)
                    deleted.append(vpc_id)
            self._idle_networks = {
                vpc: t
                for vpc, t in self._idle_networks.items()
                if vpc in present - used and vpc not in deleted
            }
        return deleted

    def repair_networks(self) -> None:
        """Re-ensure the network of every VPC a stored server uses (housekeeping): an intact one costs a few
        reads; a bridge, router namespace or dnsmasq gone behind our back is rebuilt (the next port sync puts the
        guests' taps back on a rebuilt bridge)."""
        with self._sync_lock:
            for network in _newest_networks(self._specs.all()).values():
                self._network.ensure_network(network)

    def repair_firewall(self) -> None:
        """Apply the firewall, ipsets and DHCP hosts of every stored port again (housekeeping): the kernel is
        compared with the rendered state, so this writes nothing unless something changed behind our back."""
        with self._sync_lock:
            self._sync_ports()

    def server_state(self, server_id: str) -> ServerState:
        check_server_id(server_id)
        return self._state(server_id)

    def server_action(self, server_id: str, action: ServerAction) -> ServerState:
        check_server_id(server_id)
        hard = action.type == "HARD"
        with self._server_lock(server_id):
            power = self._state(server_id).power
            with step(server_id, f"{action.type.lower()} {action.action}", VirtError):
                if power == "missing":
                    raise NotFound(f"server {server_id} has no domain on this host")
                if action.action == "stop":
                    if power in _ACTIVE:
                        self._stop(server_id, hard=hard)
                    self._remember_power(server_id, "shutoff")
                else:
                    if power not in _ACTIVE:  # start, or reboot of a stopped server: either way it should run
                        self._host.start(server_id)
                    elif action.action == "reboot":
                        self._host.reboot(server_id, hard=hard, timeout=self.settings.acpi_timeout_seconds)
                    self._remember_power(server_id, "running")
            state = self._state(server_id)
        log.info("server %s %s %s: %s", server_id, action.type, action.action, state.power)
        return state

    def console_output(self, server_id: str, length: int | None = None) -> str:
        """The serial console log, or its last `length` lines."""
        self.server_state(server_id)  # 404 for unknown servers
        path = instance_paths(self.state_dir, server_id).console_log
        try:
            with path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - CONSOLE_TAIL_BYTES))
                text = f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        if length is None:
            return text
        return "".join(text.splitlines(keepends=True)[-length:])

    # ---- host and security groups --------------------------------------------------------------------------

    def host_info(self) -> HostInfo:
        vcpus, memory_mib = self._host.capacity()
        powers = self._host.list_servers()
        specs = self._specs.all()
        for spec in specs:
            powers.setdefault(spec.id, "missing")
        # Disks left without a spec or a domain (files behind labcloud's back, a delete cut short) are reported
        # too, so the reconciler sees them as an orphan when no server owns them.
        for server_id in instance_ids(self.state_dir):
            powers.setdefault(server_id, "missing")
        return HostInfo(
            host_id=self.settings.resolved_host_id,
            hostname=socket.gethostname(),
            url=self.settings.url,
            accelerator="kvm" if self.accelerator == "kvm" else "tcg",
            vcpus=vcpus,
            memory_mib=memory_mib,
            disk_gib=shutil.disk_usage(self.state_dir).total // GIB,
            availability_zone=self.settings.availability_zone,
            underlay_ip=getattr(self._network, "underlay_ip", None),
            external_ip=getattr(self._network, "external_ip", None),
            overlays={vpc_id: view.digest() for vpc_id, view in self._network.overlay_views().items()},
            security_groups=_group_digests(specs),
            servers=[
                ServerState(id=sid, power=power, accelerator=self.accelerator)
                for sid, power in sorted(powers.items())
            ],
            volumes=volume_ids(self.state_dir),
        )

    def set_overlay(self, vpc_id: str, spec: OverlaySpec) -> bool:
        """New VXLAN peers and remote ports of a VPC (a controller push); False if this host lacks the VPC."""
        with self._sync_lock:
            return self._network.set_overlay(vpc_id, spec)

    def update_network(self, network: NetworkSpec) -> bool:
        """A VPC's changed subnets (DNS servers, DHCP on or off, gateways) pushed by the controller.

        The stored specs that use the VPC get the new network first, so a restart rebuilds what was pushed
        rather than what the servers were created with; then the host's bridge, router and dnsmasq are made to
        match, and the DHCP hosts follow. False if this host has no network for the VPC (nothing to change).
        """
        changed = self._rewrite_specs(lambda spec: _with_network(spec, network))
        with self._sync_lock:
            if network.vpc_id not in self._network.network_ids():
                return False
            self._network.ensure_network(network)
            self._sync_ports()
        log.info("vpc %s: network updated (%d server specs)", network.vpc_id, changed)
        return True

    def set_external(self, spec: ExternalSpec) -> bool:
        """EIP bindings and shared-SNAT VPCs of this host (a controller push); False if not applied."""
        with self._sync_lock:
            return self._network.set_external(spec)

    def update_security_groups(self, groups: list[SecurityGroupSpec]) -> None:
        """Replace these groups in every stored spec that uses them, then re-apply the firewall."""
        by_id = {group.id: group for group in groups}
        changed = self._rewrite_specs(lambda spec: _with_groups(spec, by_id))
        with self._sync_lock:
            self._sync_ports()
        log.info("security groups %s updated in %d server specs", ", ".join(sorted(by_id)) or "-", changed)

    # ---- disk exports (private images from servers) -------------------------------------------------------

    def export_root_disk(self, server_id: str, export_id: str) -> DiskExport:
        """Flatten the server's root disk into `<state>/exports/<export_id>.qcow2` (no backing file).

        A running guest is copied from one point in time by libvirt's backup job while it keeps running (crash
        consistent, like pulling the plug); a stopped one with `qemu-img convert` of its overlay chain. The
        server lock keeps a stopped guest from starting meanwhile. Doing it again replaces the export.
        """
        check_server_id(server_id)
        check_server_id(export_id)
        target = export_path(self.state_dir, export_id)
        with self._server_lock(server_id):
            self._require_spec(server_id)
            ensure_traversable_dir(target.parent)
            if self._host.power_state(server_id) in _ACTIVE:
                taken: Literal["running", "shutoff"] = "running"
                with step(server_id, "copying the running root disk", VirtError):
                    self._host.backup_disks(server_id, {"vda": target})
            else:
                taken = "shutoff"
                with step(server_id, "flattening the root disk", StorageError):
                    root = instance_paths(self.state_dir, server_id).root_disk
                    partial = target.with_name(f".{target.name}.part")
                    try:
                        convert_to_qcow2(root, partial, source_format="qcow2")
                        partial.replace(target)
                    finally:
                        partial.unlink(missing_ok=True)
            with step(server_id, "describing the export", StorageError):
                export = describe_export(self.state_dir, export_id, server_id, taken)
        log.info("server %s: root disk exported as %s (%s)", server_id, export_id, taken)
        return export

    def delete_export(self, export_id: str) -> None:
        check_server_id(export_id)
        remove_export(self.state_dir, export_id)

    # ---- helpers -------------------------------------------------------------------------------------------

    def _rewrite_specs(self, change: Callable[[ServerSpec], ServerSpec]) -> int:
        """Apply `change` to every stored spec, each under its server's lock; how many specs it changed."""
        changed = 0
        for spec in self._specs.all():
            with self._server_lock(spec.id):
                current = self._specs.get(spec.id)  # re-read under the lock: it may have changed or gone
                if current is None:
                    continue
                updated = change(current)
                if updated != current:
                    self._specs.put(updated)
                    changed += 1
        return changed

    @contextmanager
    def _server_lock(self, server_id: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(server_id, threading.Lock())
        with lock:
            yield

    def _state(self, server_id: str) -> ServerState:
        power = self._host.power_state(server_id)
        if power == "missing" and self._specs.get(server_id) is None:
            raise NotFound(f"server {server_id} not found on this host")
        return ServerState(id=server_id, power=power, accelerator=self.accelerator)

    def _require_spec(self, server_id: str) -> ServerSpec:
        spec = self._specs.get(server_id)
        if spec is None:
            raise NotFound(f"server {server_id} not found on this host")
        return spec

    def _volume_holder(self, volume_id: str) -> str | None:
        """The server whose stored spec attaches the volume, if any."""
        for spec in self._specs.all():
            if any(att.volume_id == volume_id for att in spec.volumes or []):
                return spec.id
        return None

    def _volume_disk(self, attachment: VolumeAttachment) -> DiskSpec:
        return DiskSpec(
            source=volume_path(self.state_dir, attachment.volume_id),
            target=attachment.device,
            serial=attachment.serial,
        )

    def _stop(self, server_id: str, *, hard: bool) -> None:
        if hard:
            self._host.destroy(server_id)
        else:  # the host destroys the domain itself if the guest ignores the ACPI button until the timeout
            self._host.shutdown(server_id, timeout=self.settings.acpi_timeout_seconds)

    def _remember_power(self, server_id: str, power: str) -> None:
        spec = self._specs.get(server_id)
        if spec is not None and spec.power != power:
            self._specs.put(spec.model_copy(update={"power": power}))

    def _sync_ports(self) -> None:
        """Hand every port of every stored server, and all their groups, to the network layer in one call."""
        ports: list[BoundPort] = []
        groups: dict[str, SecurityGroupSpec] = {}
        for spec in self._specs.all():
            groups.update((group.id, group) for group in spec.security_groups)
            ports.extend(
                BoundPort(port=port, tap=tap_name(port.id), hostname=spec.hostname) for port in spec.ports
            )
        self._network.sync_ports(ports, list(groups.values()))

    def _delete_orphan_networks(self, only: list[str] | None = None) -> None:
        """Delete networks no stored port uses (restricted to `only` when given)."""
        used = {port.vpc_id for spec in self._specs.all() for port in spec.ports}
        candidates = self._network.network_ids() if only is None else only
        for vpc_id in candidates:
            if vpc_id not in used:
                self._network.delete_network(vpc_id)


def _volume_key(volume_id: str) -> str:
    """Lock key of a volume; distinct from every server id (those never contain ':')."""
    return f"volume:{volume_id}"


def _nic_names(port: PortSpec) -> tuple[str, str]:
    return bridge_name(port.vpc_id), tap_name(port.id)


def _newest_networks(specs: list[ServerSpec]) -> dict[str, NetworkSpec]:
    """Each VPC's network as the newest stored copy has it. Servers stored at different times may carry different
    copies (a subnet changed in between, a push this host missed); the controller stamps every network it sends
    with its clock (`overlay.version`), so the highest stamp is its latest word."""
    newest: dict[str, NetworkSpec] = {}
    for spec in specs:
        for network in spec.networks:
            have = newest.get(network.vpc_id)
            if have is None or network.overlay.version > have.overlay.version:
                newest[network.vpc_id] = network
    return newest


def _with_network(spec: ServerSpec, network: NetworkSpec) -> ServerSpec:
    """`spec` with `network` in place of its copy of that VPC, keeping whichever overlay view is newer."""
    networks = []
    for net in spec.networks:
        if net.vpc_id == network.vpc_id:
            overlay = max(net.overlay, network.overlay, key=lambda view: view.version)
            net = network.model_copy(update={"overlay": overlay})
        networks.append(net)
    return spec.model_copy(update={"networks": networks})


def _group_digests(specs: list[ServerSpec]) -> dict[str, str]:
    """Group id -> digest of the rules and members the stored specs hold for it; "mixed" if they disagree."""
    seen: dict[str, set[str]] = {}
    for spec in specs:
        for group in spec.security_groups:
            seen.setdefault(group.id, set()).add(group.digest())
    return {gid: digests.pop() if len(digests) == 1 else "mixed" for gid, digests in sorted(seen.items())}


def _with_groups(spec: ServerSpec, groups: dict[str, SecurityGroupSpec]) -> ServerSpec:
    """`spec` with the given groups replacing its own copies; groups its ports name but lacked are added."""
    referenced = {gid for port in spec.ports for gid in port.security_group_ids}
    referenced |= {group.id for group in spec.security_groups}
    mine = [groups.get(group.id, group) for group in spec.security_groups]
    have = {group.id for group in mine}
    mine += [groups[gid] for gid in sorted(referenced - have) if gid in groups]
    return spec.model_copy(update={"security_groups": mine})
