"""The one place in the agent that talks to libvirt.

`LibvirtHost` owns a single connection (opened on first use, reopened when it breaks) and exposes the
lifecycle of labcloud domains keyed by server id. Every `libvirt.libvirtError` becomes one of the agent's
typed errors in `_run`, so nothing above this module ever sees a libvirt exception.

libvirt connections are thread safe; the lock only guards opening and replacing the connection. Waits
(shutdown, soft reboot) poll or wait for events between short calls and never hold the lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import libvirt

from agent.errors import AgentFailure, Conflict, NotFound, VirtError
from agent.schemas import PowerState
from agent.virt.backup_xml import domain_disk_targets, render_backup_xml
from agent.virt.domain_xml import (
    disk_source,
    disk_target,
    domain_name,
    find_disk_device,
    parse_labcloud_metadata,
    with_disk_device,
    without_disk_device,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_STATES: dict[int, PowerState] = {
    libvirt.VIR_DOMAIN_NOSTATE: "running",  # only seen transiently on an active domain
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "running",  # still running while the guest shuts down
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "paused",
}

# Error codes that mean the connection itself is gone, not that the call was refused.
_DEAD_CONNECTION_CODES = {libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN}
_TRANSPORT_CODES = {libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_ERR_RPC}
_TRANSPORT_DOMAINS = {libvirt.VIR_FROM_REMOTE, libvirt.VIR_FROM_RPC}

# NVRAM and checkpoint flags are left out: labcloud guests boot BIOS, and the test driver rejects them.
_UNDEFINE_FLAGS = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA

_KEEPALIVE_INTERVAL_S = 5
_KEEPALIVE_COUNT = 3

_event_loop_lock = threading.Lock()
_event_loop_started = False


def _ensure_event_loop() -> None:
    """Start libvirt's default event loop once per process, before the first connection is opened.

    Events are how a soft reboot is confirmed, and keepalives (which need the loop) are how a dead daemon is
    noticed. The loop is process-wide by libvirt's design.
    """
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        # Without this handler libvirt prints every error to stderr as well as raising it.
        libvirt.registerErrorHandler(_ignore_libvirt_error, None)
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def _ignore_libvirt_error(_ctx: object, _err: object) -> None:
    return None


def _run_event_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


class LibvirtHost:
    """Lifecycle of labcloud domains on one libvirt connection; idempotent wherever that makes sense."""

    def __init__(self, uri: str, *, poll_interval: float = 0.25) -> None:
        self.uri = uri
        self._poll_interval = poll_interval
        self._lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        self._backup_locks: dict[str, threading.Lock] = {}

    def __enter__(self) -> LibvirtHost:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- lifecycle -----------------------------------------------------------------------------------------

    def define(self, xml: str) -> None:
        """Define the domain, or redefine it (same name and uuid) with new config for its next cold boot."""
        meta = parse_labcloud_metadata(xml)
        server_id = meta["server_id"] if meta else None
        log.debug("server %s: defining domain XML\n%s", server_id, xml)
        # VALIDATE checks the XML against libvirt's schema, so a typo fails here instead of being dropped.
        flags = libvirt.VIR_DOMAIN_DEFINE_VALIDATE
        self._run("define", server_id, lambda conn: conn.defineXMLFlags(xml, flags))
        log.info("server %s: domain defined", server_id)

    def start(self, server_id: str) -> None:
        """Boot the domain; resume it if paused; nothing if it already runs. NotFound if it is not defined."""

        def op(conn: libvirt.virConnect) -> str:
            dom = self._lookup(conn, server_id)
            state = _power_state(dom)
            if state == "paused":
                dom.resume()
                return "resumed"
            if dom.isActive():
                return "already running"
            dom.create()
            return "started"

        outcome = self._run("start", server_id, op)
        log.info("server %s: %s", server_id, outcome)

    def destroy(self, server_id: str) -> None:
        """Pull the plug. Nothing happens if the domain is already off or not defined."""

        def op(conn: libvirt.virConnect) -> bool:
            dom = self._lookup_or_none(conn, server_id)
            if dom is None or not dom.isActive():
                return False
            try:
                dom.destroy()
            except libvirt.libvirtError as exc:
                # It stopped on its own between the check and the call: the goal is reached.
                if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID or dom.isActive():
                    raise
            return True

        if self._run("destroy", server_id, op):
            log.info("server %s: destroyed", server_id)

    def shutdown(self, server_id: str, timeout: float = 60) -> None:
        """ACPI power-button shutdown; destroy if the guest is still running after `timeout` seconds.

        Nothing happens if the domain is already off or not defined.
        """

        def press(conn: libvirt.virConnect) -> bool:
            dom = self._lookup_or_none(conn, server_id)
            if dom is None or not dom.isActive():
                return False
            # The default method is the ACPI power button, as labcloud domains have no guest-agent channel;
            # asking for it explicitly would also break the test driver, which takes no flags here.
            try:
                dom.shutdown()
            except libvirt.libvirtError as exc:
                # Typically QEMU went away during the request (the guest powered off, or a destroy raced us).
                # Whatever the cause, the wait below ends it: off soon, or destroyed at the deadline.
                log.warning(
                    "server %s: ACPI shutdown request failed (%s), waiting for the domain", server_id, exc
                )
            return True

        if not self._run("shutdown", server_id, press):
            return
        log.info("server %s: ACPI shutdown requested, waiting up to %ss", server_id, timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._is_active(server_id):
                log.info("server %s: shut down by the guest", server_id)
                return
            time.sleep(self._poll_interval)
        log.warning("server %s: guest ignored ACPI shutdown for %ss, destroying it", server_id, timeout)
        self.destroy(server_id)

    def reboot(self, server_id: str, hard: bool, timeout: float = 60) -> None:
        """Reboot a running domain, or start it if it is off.

        SOFT asks the guest through the ACPI power button, which libvirt turns into a reset once the guest
        has shut down, and falls back to destroy+start if no reset is seen within `timeout` seconds. HARD
        resets the virtual machine at once (destroy+start if the hypervisor cannot reset). NotFound if the
        domain is not defined.
        """
        if not self._is_active(server_id):
            log.info("server %s: reboot of a stopped domain starts it", server_id)
            self.start(server_id)
            return
        if hard:
            self._hard_reboot(server_id)
        elif not self._acpi_reboot(server_id, timeout):
            log.warning("server %s: guest ignored ACPI reboot for %ss, power cycling", server_id, timeout)
            self.destroy(server_id)
            self.start(server_id)

    def undefine(self, server_id: str) -> None:
        """Destroy and forget the domain. Nothing happens if it is not defined. Disk files are not touched."""
        self.destroy(server_id)

        def op(conn: libvirt.virConnect) -> bool:
            dom = self._lookup_or_none(conn, server_id)
            if dom is None:
                return False
            try:
                dom.undefineFlags(_UNDEFINE_FLAGS)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                return False
            return True

        if self._run("undefine", server_id, op):
            log.info("server %s: domain undefined", server_id)

    # -- disks ---------------------------------------------------------------------------------------------

    def attach_disk(self, server_id: str, xml: str, live: bool) -> None:
        """Plug the `<disk>` in `xml` into the domain's persistent config, and with `live` into the running guest.

        Idempotent per target: a target that already holds the same file is left alone; one that holds another
        file is a Conflict. Without `live` the config is redefined, which also works on drivers that cannot
        hot-plug (libvirt's test driver) and needs the domain shut off to take effect.
        """
        target, source = disk_target(xml), disk_source(xml)

        def op(conn: libvirt.virConnect) -> str:
            dom = self._lookup(conn, server_id)
            config = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            in_config = _holds(config, target, source, server_id)
            if not live:
                if in_config:
                    return "already in config"
                conn.defineXMLFlags(with_disk_device(config, xml), libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
                return "added to config"
            in_guest = _holds(dom.XMLDesc(0), target, source, server_id)
            flags = (0 if in_guest else libvirt.VIR_DOMAIN_AFFECT_LIVE) | (
                0 if in_config else libvirt.VIR_DOMAIN_AFFECT_CONFIG
            )
            if not flags:
                return "already attached"
            dom.attachDeviceFlags(xml, flags)
            return "hot-plugged" if flags & libvirt.VIR_DOMAIN_AFFECT_LIVE else "added to config"

        outcome = self._run("attach_disk", server_id, op)
        log.info("server %s: disk %s (%s) %s", server_id, target, source, outcome)

    def detach_disk(self, server_id: str, target: str, live: bool, timeout: float = 60) -> None:
        """Remove the disk on `target` from the config, and with `live` from the running guest.

        Hot-unplug needs the guest's cooperation and libvirt returns before it completes, so this polls the
        live XML until the disk is gone; VirtError after `timeout` seconds (the config no longer has it, so
        a retry only repeats the live part). Nothing happens if the target is not there.
        """

        def op(conn: libvirt.virConnect) -> bool:
            dom = self._lookup(conn, server_id)
            config = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            in_config = find_disk_device(config, target)
            if not live:
                if in_config is not None:
                    conn.defineXMLFlags(
                        without_disk_device(config, target), libvirt.VIR_DOMAIN_DEFINE_VALIDATE
                    )
                return False
            in_guest = find_disk_device(dom.XMLDesc(0), target)
            flags = (0 if in_guest is None else libvirt.VIR_DOMAIN_AFFECT_LIVE) | (
                0 if in_config is None else libvirt.VIR_DOMAIN_AFFECT_CONFIG
            )
            if flags:
                dom.detachDeviceFlags(in_guest or in_config, flags)
            return in_guest is not None

        if not self._run("detach_disk", server_id, op):
            log.info("server %s: disk %s removed from config", server_id, target)
            return
        deadline = time.monotonic() + timeout
        while self._live_disk(server_id, target):
            if time.monotonic() >= deadline:
                raise VirtError(f"server {server_id}: the guest did not release disk {target} in {timeout}s")
            time.sleep(self._poll_interval)
        log.info("server %s: disk %s hot-unplugged", server_id, target)

    def grow_disk(self, server_id: str, target: str, size_bytes: int) -> None:
        """Grow the disk on `target` of the running domain to `size_bytes`, so the guest sees the new size.

        qemu resizes the image file itself (the agent cannot: qemu holds its write lock). A disk already of
        that size is left alone; libvirt refuses a shrink.
        """

        def op(conn: libvirt.virConnect) -> bool:
            dom = self._lookup(conn, server_id)
            if find_disk_device(dom.XMLDesc(0), target) is None:
                raise NotFound(f"server {server_id}: no disk {target} in the running guest")
            capacity = dom.blockInfo(target)[0]  # (capacity, allocation, physical): the guest sees capacity
            if capacity == size_bytes:
                return False
            dom.blockResize(target, size_bytes, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            return True

        if self._run("grow_disk", server_id, op):
            log.info("server %s: disk %s grown to %s bytes", server_id, target, size_bytes)

    def backup_disks(
        self,
        server_id: str,
        targets: dict[str, Path],
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Copy the disks named in `targets` (target dev -> new file) of a running domain, all from one point
        in time, to standalone qcow2 files (no backing file); the guest keeps running.

        libvirt's push-mode backup (`virDomainBackupBegin`): QEMU freezes the view of every chosen disk at the
        same instant (copy-before-write) and copies in the background. Blocks until the job ends, calling
        `progress(done, total)` (bytes) on the way. Files already at `targets` are replaced (staging leftovers);
        on failure the job is aborted and the copies removed. Conflict if the domain is not running (copy a
        stopped guest's disks with qemu-img instead), NotFound for an unknown domain or disk. One backup per
        domain at a time: a second caller waits; a job left by an earlier agent process is aborted first.
        """
        if not targets:
            return
        with self._backup_lock(server_id):
            checked = threading.Event()  # set once the targets are known not to be the domain's own disks

            def begin(conn: libvirt.virConnect) -> None:
                dom = self._lookup(conn, server_id)
                if not dom.isActive():
                    raise Conflict(f"server {server_id}: not running, copy its disks with qemu-img")
                disks = domain_disk_targets(dom.XMLDesc(0))
                unknown = sorted(set(targets) - set(disks))
                if unknown:
                    raise NotFound(f"server {server_id}: no disk {', '.join(unknown)}")
                for target, copy in targets.items():
                    if disks[target] == str(copy):
                        raise Conflict(f"server {server_id}: backup target {copy} is the disk itself")
                if _job_active(dom):
                    log.warning("server %s: aborting a job left by an earlier agent process", server_id)
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.abortJob()
                    self._wait_job_end(dom, server_id)
                checked.set()
                for copy in targets.values():
                    copy.unlink(missing_ok=True)
                dom.backupBegin(render_backup_xml(list(disks), targets), None, 0)

            log.info("server %s: backup of %s started", server_id, ", ".join(sorted(targets)))
            try:
                self._run("backup_disks", server_id, begin)
                self._run(
                    "backup_disks", server_id, lambda conn: self._await_backup(conn, server_id, progress)
                )
            except BaseException:
                if not checked.is_set():
                    raise
                self._abort_backup(server_id)
                for copy in targets.values():
                    with contextlib.suppress(OSError):
                        copy.unlink(missing_ok=True)
                raise
        log.info("server %s: backup of %s done", server_id, ", ".join(sorted(targets)))

    def _backup_lock(self, server_id: str) -> threading.Lock:
        with self._lock:
            return self._backup_locks.setdefault(server_id, threading.Lock())

    def _await_backup(
        self, conn: libvirt.virConnect, server_id: str, progress: Callable[[int, int], None] | None
    ) -> None:
        dom = self._lookup(conn, server_id)
        while True:
            stats = dom.jobStats(0)
            if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
                break
            if progress is not None and stats.get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP:
                progress(int(stats.get("disk_processed", 0)), int(stats.get("disk_total", 0)))
            time.sleep(self._poll_interval)
        done = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        if done.get("type") != libvirt.VIR_DOMAIN_JOB_COMPLETED:
            reason = done.get("errmsg") or "the backup job failed"
            raise VirtError(f"server {server_id}: backup failed: {reason}")
        if progress is not None:
            total = int(done.get("disk_total", 0))
            progress(int(done.get("disk_processed", total)), total)

    def _abort_backup(self, server_id: str) -> None:
        def op(conn: libvirt.virConnect) -> None:
            dom = self._lookup_or_none(conn, server_id)
            if dom is None or not dom.isActive() or not _job_active(dom):
                return
            with contextlib.suppress(libvirt.libvirtError):
                dom.abortJob()
            self._wait_job_end(dom, server_id)

        try:
            self._run("backup_disks", server_id, op)
        except AgentFailure as exc:
            log.warning("server %s: could not abort the backup job: %s", server_id, exc)

    def _wait_job_end(self, dom: libvirt.virDomain, server_id: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while _job_active(dom):
            if time.monotonic() >= deadline:
                raise VirtError(f"server {server_id}: the block job did not end in {timeout}s")
            time.sleep(self._poll_interval)

    def _live_disk(self, server_id: str, target: str) -> bool:
        def op(conn: libvirt.virConnect) -> bool:
            return find_disk_device(self._lookup(conn, server_id).XMLDesc(0), target) is not None

        return self._run("detach_disk", server_id, op)

    # -- inspection ----------------------------------------------------------------------------------------

    def power_state(self, server_id: str) -> PowerState:
        """The domain's power state, or "missing" if it is not defined."""

        def op(conn: libvirt.virConnect) -> PowerState:
            dom = self._lookup_or_none(conn, server_id)
            return "missing" if dom is None else _power_state(dom)

        return self._run("power_state", server_id, op)

    def list_servers(self) -> dict[str, PowerState]:
        """Power state of each domain with labcloud metadata, keyed by server id; others are skipped."""

        def op(conn: libvirt.virConnect) -> dict[str, PowerState]:
            servers: dict[str, PowerState] = {}
            for dom in conn.listAllDomains(0):
                try:
                    meta = parse_labcloud_metadata(dom.XMLDesc(0))
                    if meta is not None:
                        servers[meta["server_id"]] = _power_state(dom)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
                    # Undefined while we were listing: it is simply not there any more.
            return servers

        return self._run("list_servers", None, op)

    def domain_xml(self, server_id: str, *, inactive: bool = False) -> str:
        """The live XML (or with `inactive`, the persistent config) of a domain. NotFound if not defined."""
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0

        def op(conn: libvirt.virConnect) -> str:
            return str(self._lookup(conn, server_id).XMLDesc(flags))

        return self._run("domain_xml", server_id, op)

    def capacity(self) -> tuple[int, int]:
        """(vCPUs, memory in MiB) of the host, as libvirt sees it."""
        info = self._run("capacity", None, lambda conn: conn.getInfo())
        return int(info[2]), int(info[1])

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError as exc:
                log.debug("closing %s: %s", self.uri, exc)

    # -- internals -----------------------------------------------------------------------------------------

    def _hard_reboot(self, server_id: str) -> None:
        def op(conn: libvirt.virConnect) -> bool:
            try:
                self._lookup(conn, server_id).reset(0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
                return False
            return True

        if self._run("reboot", server_id, op):
            log.info("server %s: reset", server_id)
        else:
            log.info("server %s: reset unsupported here, destroying and starting", server_id)
            self.destroy(server_id)
            self.start(server_id)

    def _acpi_reboot(self, server_id: str, timeout: float) -> bool:
        """Press the ACPI power button for a reboot; True once libvirt reports the guest's reset."""
        rebooted = threading.Event()

        def on_reboot(_conn: libvirt.virConnect, _dom: libvirt.virDomain, _opaque: object) -> None:
            rebooted.set()  # runs on the event thread: no libvirt calls, no locks

        def press(conn: libvirt.virConnect) -> tuple[libvirt.virConnect, int]:
            dom = self._lookup(conn, server_id)
            callback = conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, on_reboot, None)
            try:
                dom.reboot(libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)
            except libvirt.libvirtError:
                _deregister(conn, callback, server_id)
                raise
            return conn, callback

        conn, callback = self._run("reboot", server_id, press)
        log.info("server %s: ACPI reboot requested, waiting up to %ss", server_id, timeout)
        try:
            confirmed = rebooted.wait(timeout)
        finally:
            _deregister(conn, callback, server_id)
        if confirmed:
            log.info("server %s: guest rebooted", server_id)
        return confirmed

    def _is_active(self, server_id: str) -> bool:
        return bool(self._run("state", server_id, lambda conn: self._lookup(conn, server_id).isActive()))

    @staticmethod
    def _lookup(conn: libvirt.virConnect, server_id: str) -> libvirt.virDomain:
        return conn.lookupByName(domain_name(server_id))

    @staticmethod
    def _lookup_or_none(conn: libvirt.virConnect, server_id: str) -> libvirt.virDomain | None:
        try:
            return conn.lookupByName(domain_name(server_id))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _connection(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is not None:
                if _alive(self._conn):
                    return self._conn
                log.warning("libvirt connection to %s is dead, reconnecting", self.uri)
                self._conn = None
            _ensure_event_loop()
            conn = libvirt.open(self.uri)  # raises libvirtError; _run translates it
            with contextlib.suppress(libvirt.libvirtError):  # local drivers (test://) have no keepalive
                conn.setKeepAlive(_KEEPALIVE_INTERVAL_S, _KEEPALIVE_COUNT)
            log.info("connected to libvirt at %s", self.uri)
            self._conn = conn
            return conn

    def _forget(self, conn: libvirt.virConnect) -> None:
        # Drop only our reference: calls still running on it in other threads keep it alive until they finish.
        with self._lock:
            if self._conn is conn:
                self._conn = None

    def _run(self, action: str, server_id: str | None, fn: Callable[[libvirt.virConnect], T]) -> T:
        """Run `fn` on the connection, retrying once on a fresh one if the connection died under it.

        Every method's work is idempotent, so the retry is safe. All libvirt errors become agent errors here.
        """
        for attempt in (1, 2):
            conn: libvirt.virConnect | None = None
            try:
                conn = self._connection()
                return fn(conn)
            except libvirt.libvirtError as exc:
                if conn is not None and _connection_lost(conn, exc):
                    self._forget(conn)
                    if attempt == 1:
                        log.warning("%s %s: libvirt connection lost (%s), retrying", action, server_id, exc)
                        continue
                raise _translate(action, server_id, exc) from exc
        raise AssertionError("unreachable")


def _holds(domain_xml: str, target: str, source: str | None, server_id: str) -> bool:
    """True if the domain has `source` on `target`; Conflict if another file sits there."""
    present = find_disk_device(domain_xml, target)
    if present is None:
        return False
    if disk_source(present) != source:
        raise Conflict(f"server {server_id}: disk {target} already holds {disk_source(present)}")
    return True


def _job_active(dom: libvirt.virDomain) -> bool:
    try:
        return int(dom.jobStats(0).get("type", libvirt.VIR_DOMAIN_JOB_NONE)) != libvirt.VIR_DOMAIN_JOB_NONE
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:  # the domain stopped
            return False
        raise


def _power_state(dom: libvirt.virDomain) -> PowerState:
    state, _reason = dom.state()
    return _STATES.get(state, "crashed")


def _deregister(conn: libvirt.virConnect, callback: int, server_id: str) -> None:
    try:
        conn.domainEventDeregisterAny(callback)
    except libvirt.libvirtError as exc:
        log.debug("server %s: deregistering event callback: %s", server_id, exc)


def _connection_lost(conn: libvirt.virConnect, exc: libvirt.libvirtError) -> bool:
    code, domain = exc.get_error_code(), exc.get_error_domain()
    if code in _DEAD_CONNECTION_CODES or (code in _TRANSPORT_CODES and domain in _TRANSPORT_DOMAINS):
        return True
    return not _alive(conn)


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False  # e.g. "invalid connection pointer" once closed


def _translate(action: str, server_id: str | None, exc: libvirt.libvirtError) -> AgentFailure:
    message = exc.get_error_message() or str(exc)
    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
        return NotFound(f"server {server_id}: no domain on this host")
    subject = f"server {server_id}" if server_id else "host"
    return VirtError(f"{subject}: libvirt {action} failed: {message}")
