"""A throwaway hypervisor host for booting guest images in tests, built the way GUEST.md §3-4 describes.

One network namespace is the "host": a private libvirtd (own run/lib/cache/log/etc directories, bind-mounted
in the private mount namespace `ip netns exec` opens), a bridge with an address, and dnsmasq handing out fixed
MAC -> IP leases with the DHCP options a test chooses (MTU, DNS). A second namespace is the "client", joined
to the bridge by a veth pair, from which tests SSH into guests: traffic never touches the root namespace.
`Lab.close()` undoes everything, also after a half-finished `start()`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import paramiko

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def run(*argv: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.fspath(a) for a in argv], check=check, capture_output=True, text=True)


def netns_connect(netns: str, address: tuple[str, int], timeout: float) -> socket.socket:
    """A TCP connection opened from inside `netns`: a helper thread enters the namespace (setns affects only
    the calling thread) and connects; the socket stays in that namespace wherever it is used afterwards."""
    opened: list[socket.socket] = []
    failed: list[BaseException] = []

    def connect() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            opened.append(socket.create_connection(address, timeout=timeout))
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=connect, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return opened[0]


class _AcceptHostKey(paramiko.MissingHostKeyPolicy):
    """Every instance generates a fresh host key; tests only care that they reached the right guest."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        return None


@dataclass
class Subnet:
    prefix: str = "10.66.1"  # /24, only ever inside the lab's namespaces
    mtu: int = 1450  # pushed to guests as DHCP option 26, the bridge keeps 1500
    dns: str = "10.66.1.53"  # advertised only, nothing answers there

    @property
    def gateway(self) -> str:
        return f"{self.prefix}.1"

    @property
    def client_ip(self) -> str:
        return f"{self.prefix}.254"


@dataclass
class Lab:
    """Namespaces `lctest-<tag>-h` (host) and `lctest-<tag>-c` (client) plus everything inside them."""

    workdir: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    subnet: Subnet = field(default_factory=Subnet)

    def __post_init__(self) -> None:
        self.host_ns = f"lctest-{self.tag}-h"
        self.client_ns = f"lctest-{self.tag}-c"
        self.bridge = f"br-{self.tag}"
        self.state = self.workdir / "host"
        self._conn: libvirt.virConnect | None = None
        self._namespaces: list[str] = []

    # --- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> Lab:
        # qemu runs as libvirt-qemu: every directory on the way to disks, seeds and logs must be traversable.
        self.workdir.chmod(0o755)
        for sub in ("run", "lib", "cache", "log", "etc"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        self.state.chmod(0o755)
        for ns in (self.host_ns, self.client_ns):
            run("ip", "netns", "add", ns)
            self._namespaces.append(ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        self._start_libvirtd()
        self._start_network()
        return self

    def close(self) -> None:
        """Tear down in reverse order; every step runs even if an earlier one failed."""
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                for dom in self._conn.listAllDomains():
                    with contextlib.suppress(libvirt.libvirtError):
                        if dom.isActive():
                            dom.destroy()
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.undefine()
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None
        for pidfile in (self.state / "libvirtd.pid", self.state / "dnsmasq.pid"):
            self._kill_pidfile(pidfile)
        for ns in reversed(self._namespaces):
            # Anything still running in the namespace (a qemu left by a crashed libvirtd) was started by us.
            pids = run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            run("ip", "netns", "del", ns, check=False)
        self._namespaces.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Lab:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- libvirt ------------------------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.state}/run/libvirt-sock"

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None:
            self._conn = libvirt.open(self.uri)
        return self._conn

    def _start_libvirtd(self) -> None:
        h = self.state
        (h / "etc" / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{h}/run"\n'
            'unix_sock_rw_perms = "0700"\n'
            'auth_unix_ro = "none"\n'
            'auth_unix_rw = "none"\n'
            f'log_outputs = "3:file:{h}/libvirtd.log"\n'
        )
        # No virtlogd here: QEMU writes its own log files.
        (h / "etc" / "qemu.conf").write_text('stdio_handler = "file"\n')
        binds = " && ".join(
            f"mount --bind {h}/{src} {dst}"
            for src, dst in (
                ("run", "/run/libvirt"),
                ("lib", "/var/lib/libvirt"),
                ("cache", "/var/cache/libvirt"),
                ("log", "/var/log/libvirt"),
                ("etc", "/etc/libvirt"),
            )
        )
        start = f"{binds} && exec libvirtd -d --pid-file {h}/libvirtd.pid"
        run("ip", "netns", "exec", self.host_ns, "sh", "-c", start)
        wait_for(lambda: (h / "run" / "libvirt-sock").exists(), 30, "libvirtd socket")
        log.info("libvirtd up in %s: %s", self.host_ns, self.uri)

    # --- network ------------------------------------------------------------------------------------------

    def _start_network(self) -> None:
        h, ns, net = self.state, self.host_ns, self.subnet
        run("ip", "-n", ns, "link", "add", self.bridge, "type", "bridge")
        run("ip", "-n", ns, "addr", "add", f"{net.gateway}/24", "dev", self.bridge)
        run("ip", "-n", ns, "link", "set", self.bridge, "up")
        # Created directly inside the namespaces: the veth never exists in the root namespace.
        run(
            "ip", "link", "add", "veth-c", "netns", self.client_ns, "type", "veth",
            "peer", "name", "veth-h", "netns", ns,
        )  # fmt: skip
        run("ip", "-n", ns, "link", "set", "veth-h", "master", self.bridge, "up")
        run("ip", "-n", self.client_ns, "addr", "add", f"{net.client_ip}/24", "dev", "veth-c")
        run("ip", "-n", self.client_ns, "link", "set", "veth-c", "up")
        hosts = h / "dhcp-hosts"
        hosts.write_text("")
        hosts.chmod(0o644)
        run(
            "ip", "netns", "exec", ns, "dnsmasq", "--conf-file=/dev/null", "--port=0", "--bind-interfaces",
            f"--interface={self.bridge}", "--except-interface=lo", f"--pid-file={h}/dnsmasq.pid",
            f"--dhcp-leasefile={h}/dnsmasq.leases", "--dhcp-authoritative",
            f"--dhcp-range={net.prefix}.100,{net.prefix}.199,255.255.255.0,12h",
            f"--dhcp-option=option:router,{net.gateway}", f"--dhcp-option=option:mtu,{net.mtu}",
            f"--dhcp-option=option:dns-server,{net.dns}", f"--dhcp-hostsfile={hosts}",
            "--log-dhcp", f"--log-facility={h}/dnsmasq.log",
        )  # fmt: skip
        wait_for(lambda: (h / "dnsmasq.pid").exists(), 30, "dnsmasq pid file")

    def add_dhcp_host(self, mac: str, ip: str, name: str) -> None:
        with (self.state / "dhcp-hosts").open("a") as f:
            f.write(f"{mac},{ip},{name}\n")
        os.kill(int((self.state / "dnsmasq.pid").read_text()), signal.SIGHUP)

    # --- SSH from the client namespace ----------------------------------------------------------------------

    def ssh(
        self,
        ip: str,
        *,
        pkey: paramiko.PKey | None = None,
        password: str | None = None,
        timeout: float = 10,
    ) -> paramiko.SSHClient:
        sock = netns_connect(self.client_ns, (ip, 22), timeout)
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_AcceptHostKey())
        try:
            client.connect(
                ip, username="root", pkey=pkey, password=password, sock=sock, timeout=timeout,
                banner_timeout=timeout, auth_timeout=timeout, look_for_keys=False, allow_agent=False,
            )  # fmt: skip
        except BaseException:
            client.close()
            sock.close()
            raise
        return client

    def wait_ssh(
        self, ip: str, *, pkey: paramiko.PKey, timeout: float, alive: Callable[[], None] | None = None
    ) -> paramiko.SSHClient:
        """Poll until key login works; `alive` (if given) is checked between tries to fail fast."""
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if alive is not None:
                alive()
            try:
                return self.ssh(ip, pkey=pkey, timeout=5)
            except (OSError, paramiko.SSHException, EOFError) as exc:
                last = exc
                time.sleep(0.5)
        raise TimeoutError(f"no SSH login to {ip} within {timeout} s: {last!r}")

    # --- helpers --------------------------------------------------------------------------------------------

    @staticmethod
    def _kill_pidfile(pidfile: Path) -> None:
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not _alive(pid), 15, f"pid {pid} to exit")
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True while `pid` runs. A zombie counts as gone: the daemons fork away from us and this machine's PID 1
    does not always reap promptly."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def exec_ok(client: paramiko.SSHClient, command: str, timeout: float = 60) -> str:
    """Run `command` on the guest; return its stdout, or fail with its status and stderr."""
    _stdin, stdout, stderr = client.exec_command(command, timeout=timeout)
    out = stdout.read().decode()
    status = stdout.channel.recv_exit_status()
    if status != 0:
        raise AssertionError(f"{command!r} exited {status}: {stderr.read().decode()}{out}")
    return out
