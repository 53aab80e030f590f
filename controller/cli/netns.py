"""Named network namespaces for the CLI (the lab): create, delete, run commands in them, enter them.

Named namespaces live under /run/netns (`ip netns add`), so every one of them shows in `ip netns list` and
`ip netns exec` can run a daemon in it with a matching /sys.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from controller.cli import daemon
from controller.cli.errors import CliError

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def ip(*argv: str) -> str:
    """Run `ip …`; CliError with ip's own message on failure."""
    done = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CliError("network", f"ip {' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def create(ns: str) -> None:
    """A fresh namespace with lo up (one that already exists is an error: it may be someone else's)."""
    ip("netns", "add", ns)
    ip("-n", ns, "link", "set", "lo", "up")


def pids(ns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def delete(ns: str, timeout: float = 10.0) -> list[int]:
    """Kill whatever still runs in `ns`, then delete it; returns the pids that had to be killed."""
    if not exists(ns):
        return []
    leftover = pids(ns)
    kill_all(leftover, timeout)
    ip("netns", "del", ns)
    return leftover


def kill_all(targets: Sequence[int], timeout: float = 10.0) -> None:
    """SIGKILL the processes and wait until they are gone (or zombies)."""
    for pid in targets:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(daemon.is_alive(p) for p in targets):
        time.sleep(0.05)


def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """argv run inside `ns` by `ip netns exec` (which also gives it that namespace's /sys)."""
    return ["ip", "netns", "exec", ns, *argv]


@contextmanager
def entered(ns: str) -> Iterator[None]:
    """The calling thread inside `ns` for the block (a network namespace is per thread); sockets opened in
    the block stay in `ns`. `ns` is a name from `ip netns add` or a path such as /proc/<pid>/ns/net (an unnamed
    namespace)."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        path = ns if ns.startswith("/") else NETNS_DIR / ns
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


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")
