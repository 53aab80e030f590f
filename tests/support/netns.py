"""Test network namespaces: create and delete them, run commands in them, move the calling thread into one.

Every namespace a test makes is named `lct-<random>` so leaks are easy to spot with `ip netns list`.
A network namespace is per thread on Linux, so `entered(ns)` lets a test use the official SDK in-process
against a controller that listens on 127.0.0.1 inside the namespace.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

PREFIX = "lct-"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def create(prefix: str = PREFIX) -> str:
    """A fresh namespace with lo up; its name is unique on this machine."""
    name = f"{prefix}{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
    return name


def exists(ns: str) -> bool:
    return Path("/run/netns", ns).exists()


def pids(ns: str) -> list[int]:
    """Every process whose network namespace is `ns`."""
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def netns_inode(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def pids_in_inode(inode: int) -> list[int]:
    """Every process in the network namespace with this inode (named or not)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and netns_inode(entry) == inode:
            found.append(int(entry))
    return found


def kill_all(targets: Sequence[int], timeout: float = 10.0) -> None:
    """SIGKILL the processes and wait until they are gone (or zombies)."""
    for pid in targets:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in targets):
        time.sleep(0.05)


def delete(ns: str) -> list[int]:
    """Kill everything still in `ns`, then delete it; returns the pids that had to be killed."""
    leftover = pids(ns) if exists(ns) else []
    kill_all(leftover)
    if exists(ns):
        subprocess.run(["ip", "netns", "del", ns], check=True, capture_output=True)
    return leftover


def run_in(
    ns: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command inside `ns` and capture its output as text."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        env=None if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
    )


@contextmanager
def entered(ns: str) -> Iterator[None]:
    """Move the calling thread into `ns` (setns with CLONE_NEWNET) and back out afterwards.

    Sockets created inside stay in `ns` for their whole life, even when used after the block.
    """
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        # A name from `ip netns add`, or a path such as /proc/<pid>/ns/net (an unnamed namespace).
        path = ns if ns.startswith("/") else f"/run/netns/{ns}"
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(original)


@contextmanager
def namespace(prefix: str = PREFIX) -> Iterator[str]:
    """A namespace for the duration of the block, deleted (with anything left in it) afterwards."""
    ns = create(prefix)
    try:
        yield ns
    finally:
        delete(ns)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")
