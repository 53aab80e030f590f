"""Helpers for the net tests: a simulated host namespace in which HostNetwork runs, and fake guests.

Each HostNetwork call runs in a freshly forked child process that entered the host namespace, so every call is
a "restarted agent" that knows only what its state dir and the kernel tell it. A fake guest is a further
namespace joined by a veth whose host end carries the port's tap name and is enslaved to the VPC bridge, which
is what libvirt does with a real tap (physdev matches veth ports the same way).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.net import names
from agent.net.network import HostNetwork
from agent.net.router import ENV_OWNER
from agent.schemas import PortSpec

NS_PREFIX = "lctest-net-"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


# Namespaces of the test (named, made with `ip netns add`) and the processes in them


def create_netns() -> str:
    name = NS_PREFIX + secrets.token_hex(4)
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
    return name


def netns_inode(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def pids_in_netns(inode: int) -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and netns_inode(entry) == inode]


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: all(netns_inode(pid) is None for pid in pids), f"processes {pids} to exit")


def delete_netns(name: str) -> None:
    path = Path("/run/netns") / name
    if not path.exists():
        return
    inode = path.stat().st_ino
    kill_all(pids_in_netns(inode))
    subprocess.run(["ip", "netns", "del", name], check=True, capture_output=True)


def run_in_netns(ns: str, argv: tuple[str, ...] | list[str], check: bool = True) -> str:
    done = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} in {ns} failed ({done.returncode}): {done.stderr}")
    return done.stdout


@contextlib.contextmanager
def entered(ns: str) -> Iterator[None]:
    """The calling thread inside `ns` (a network namespace is per thread) for the block."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        yield
    finally:
        _setns(original)
        os.close(target)
        os.close(original)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def call_in_netns(ns: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs) run by a forked child inside namespace `ns`; its error is re-raised here."""
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_main, args=(sender, ns, fn, args, kwargs))
    child.start()
    sender.close()
    try:
        ok, value = receiver.recv()
    except EOFError:
        child.join()
        raise RuntimeError(f"child in {ns} died with exit code {child.exitcode}") from None
    child.join()
    if not ok:
        raise value
    return value


def _child_main(conn: Any, ns: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
    try:
        with entered(ns):
            result: tuple[bool, Any] = (True, fn(*args, **kwargs))
    except BaseException as exc:  # report everything, the parent re-raises it
        result = (False, exc)
    try:
        conn.send(result)
    except Exception:  # an exception that does not pickle: send its traceback instead
        conn.send((False, RuntimeError("".join(traceback.format_exception(result[1])))))


def tcp_probe(ip: str, port: int, timeout_s: float = 3.0, source: str | None = None) -> str:
    """'ok' if a TCP connection opens, 'refused' on RST, 'timeout' if nothing answers (dropped)."""
    try:
        with socket.create_connection(
            (ip, port), timeout=timeout_s, source_address=(source, 0) if source else None
        ):
            return "ok"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error: {exc}"


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


_UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc hook: configure the lease and record what the server sent
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route replace default via "$router" dev "$interface"
    env > "$LEASE_OUT.tmp" && mv "$LEASE_OUT.tmp" "$LEASE_OUT"
    ;;
esac
exit 0
"""


@dataclass
class Guest:
    ns: str
    port: PortSpec
    tap: str


class Sandbox:
    """A simulated hypervisor host (one namespace) plus fake guests, all removed by `close`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.listeners: list[subprocess.Popen[bytes]] = []
        self.script = workdir / "udhcpc.sh"
        self.script.write_text(_UDHCPC_SCRIPT)
        self.script.chmod(0o755)
        self.underlay_ip: str | None = None  # set it (and give the host that address) to test the overlay
        self.host = create_netns()  # last: nothing below can fail and leak it
        self.namespaces = [self.host]

    # the code under test, run as a fresh agent process inside the host namespace

    def net(self, method: str, *args: Any) -> Any:
        def invoke() -> Any:
            return getattr(HostNetwork(self.state_dir, underlay_ip=self.underlay_ip), method)(*args)

        return call_in_netns(self.host, invoke)

    def call(self, ns: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return call_in_netns(ns, fn, *args, **kwargs)

    # independent oracles

    def sh(self, ns: str, *argv: str, check: bool = True) -> str:
        return run_in_netns(ns, argv, check=check)

    def ip_json(self, ns: str, *argv: str) -> Any:
        return json.loads(self.sh(ns, "ip", "-j", *argv) or "[]")

    def router_ip_json(self, router_pid: int, *argv: str) -> Any:
        out = subprocess.run(
            ["nsenter", f"--net=/proc/{router_pid}/ns/net", "ip", "-j", *argv],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return json.loads(out or "[]")

    def record(self, vpc_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state_dir / "net" / vpc_id / "network.json").read_text())
        return data

    # fake guests

    def add_guest(self, port: PortSpec) -> Guest:
        """A namespace whose eth0 (with the port's MAC) is plugged into the VPC bridge as the port's tap."""
        ns = create_netns()
        self.namespaces.append(ns)
        tap = names.tap_name(port.id)
        self.sh(self.host, "ip", "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.sh(self.host, "ip", "link", "set", tap, "master", names.bridge_name(port.vpc_id), "up")
        self.sh(ns, "ip", "link", "set", "eth0", "address", port.mac, "up")
        return Guest(ns=ns, port=port, tap=tap)

    def dhcp(self, guest: Guest, *, tries: int = 5) -> dict[str, str] | None:
        """Run udhcpc once in the guest; the options it was given, or None if no server answered."""
        out = self.workdir / f"lease-{guest.ns}"
        out.unlink(missing_ok=True)
        argv = ["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", str(tries), "-T", "1"]
        argv += ["-O", "mtu", "-s", str(self.script)]
        done = subprocess.run(
            ["ip", "netns", "exec", guest.ns, *argv],
            env={**os.environ, "LEASE_OUT": str(out)},
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or not out.exists():
            return None
        return dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)

    def listen(self, ns: str, port: int) -> None:
        """A TCP listener on every IPv4 and IPv6 address of `ns`, ready when this returns."""
        code = (
            "import socket\n"
            "s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
            f"s.bind(('::', {port})); s.listen(64)\n"
            "while True: s.accept()[0].close()\n"
        )
        self.listeners.append(subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", code]))
        wait_until(lambda: self.call(ns, tcp_probe, "127.0.0.1", port) == "ok", f"listener on {ns}:{port}")

    def probe(self, ns: str, ip: str, port: int, source: str | None = None) -> str:
        return str(self.call(ns, tcp_probe, ip, port, 3.0, source))

    def close(self) -> None:
        for listener in self.listeners:
            listener.kill()
            listener.wait()
        with contextlib.suppress(Exception):
            self.net("teardown_all")
        # Whatever the code under test left behind: its router holders (found by marker) and their netns.
        owner = str((self.state_dir / "net").resolve())
        for pid in _pids_with_env(ENV_OWNER, owner):
            inode = netns_inode(pid)
            if inode is not None:
                kill_all(pids_in_netns(inode))
        for ns in reversed(self.namespaces):
            delete_netns(ns)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _pids_with_env(key: str, value: str) -> list[int]:
    wanted = f"{key}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if wanted in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    found.append(int(entry))
    return found


FLOOD_MAC = "00:00:00:00:00:00"


@contextlib.contextmanager
def underlay_sandbox(workdir: Path, local_ip: str) -> Iterator[Sandbox]:
    """A sandbox whose host namespace has the underlay address `local_ip` (on a veth pair with both ends in
    the namespace: not every kernel has the dummy driver)."""
    workdir.mkdir(mode=0o755)
    sandbox = Sandbox(workdir)
    try:
        sandbox.underlay_ip = local_ip
        sandbox.sh(
            sandbox.host, "ip", "link", "add", "ul0", "mtu", "1550", "type", "veth", "peer", "name", "ul1"
        )
        sandbox.sh(sandbox.host, "ip", "addr", "add", f"{local_ip}/24", "dev", "ul0")
        sandbox.sh(sandbox.host, "ip", "link", "set", "ul0", "up")
        yield sandbox
    finally:
        sandbox.close()


def flood_list(device: str) -> set[str] | None:
    """The VTEPs a VXLAN device floods to (`bridge fdb` entries for the all-zero MAC); None without the device.
    Call it inside the namespace that has the device."""
    done = subprocess.run(["bridge", "-j", "fdb", "show", "dev", device], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    return {e["dst"] for e in json.loads(done.stdout or "[]") if e["mac"] == FLOOD_MAC}
