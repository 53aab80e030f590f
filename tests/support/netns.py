"""Test network namespaces: create and delete them, run commands in them, move the calling thread into one.

Every namespace a test makes is named `lct-<random>` so leaks are easy to spot with `ip netns list`.
A network namespace is per thread on Linux, so `entered(ns)` lets a test use the official SDK in-process
against a controller that listens on 127.0.0.1 inside the namespace.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

# The product's namespace helpers, shared with the tests: the same logic for any named or unnamed namespace.
from controller.cli.netns import entered as entered
from controller.cli.netns import exists as exists
from controller.cli.netns import kill_all as kill_all
from controller.cli.netns import pids as pids

PREFIX = "lct-"


def create(prefix: str = PREFIX) -> str:
    """A fresh namespace with lo up; its name is unique on this machine."""
    name = f"{prefix}{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
    return name


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
def namespace(prefix: str = PREFIX) -> Iterator[str]:
    """A namespace for the duration of the block, deleted (with anything left in it) afterwards."""
    ns = create(prefix)
    try:
        yield ns
    finally:
        delete(ns)
