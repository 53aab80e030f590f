"""Running the networking tools and looking at processes through /proc.

Every external command of the net package goes through `run`, which turns a missing binary or a non-zero exit
into `NetworkError` with the tool's own stderr in the message.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from agent.errors import NetworkError

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 120.0  # only guards against a hung tool; normal calls take milliseconds
_PROC = Path("/proc")


def which(tool: str) -> str:
    """Absolute path of a tool (also found in sbin dirs missing from PATH), or NetworkError."""
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise NetworkError(f"{tool} is not installed (needed for host networking)")
    return path


def run(argv: Sequence[str], *, stdin: str | None = None) -> str:
    """Run a tool and return its stdout; NetworkError if it cannot run or exits non-zero."""
    argv = [which(argv[0]), *argv[1:]]
    log.debug("run %s", " ".join(argv))
    try:
        done = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"{os.path.basename(argv[0])} could not run: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise NetworkError(f"{' '.join(argv[:3])} ... failed with exit status {done.returncode}: {detail}")
    return done.stdout


def in_netns(netns_path: str, argv: Sequence[str]) -> list[str]:
    """argv wrapped so that it runs in the network namespace at `netns_path` (only the netns changes)."""
    return ["nsenter", f"--net={netns_path}", "--", which(argv[0]), *argv[1:]]


def netns_inode(pid: int | str = "self") -> int | None:
    """Inode of a process's network namespace; None if the process is gone or a zombie."""
    try:
        return os.stat(_PROC / str(pid) / "ns" / "net").st_ino
    except OSError:
        return None


def environ(pid: int) -> dict[str, str]:
    try:
        raw = (_PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, value in pairs}


def cmdline(pid: int) -> list[str]:
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def all_pids() -> Iterator[int]:
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def pids_in_netns(inode: int) -> list[int]:
    """Every live process whose network namespace is `inode`."""
    return [pid for pid in all_pids() if netns_inode(pid) == inode]


def is_running(pid: int) -> bool:
    """True while the process exists and is not a zombie (zombies have left their namespaces)."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may itself contain spaces.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def _reap(pid: int) -> None:
    # Only our own children can be reaped; for adopted processes this is ECHILD and PID 1 reaps them.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def terminate(pids: Sequence[int], *, grace_s: float = 5.0) -> None:
    """SIGTERM the processes, SIGKILL whatever still runs after `grace_s`, return once all are gone."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    left = _wait_gone(pids, grace_s)
    for pid in left:
        log.warning("process %s ignored SIGTERM; killing it", pid)
        _signal(pid, signal.SIGKILL)
    if _wait_gone(left, 30.0):
        raise NetworkError(f"processes {left} survived SIGKILL")


def _wait_gone(pids: Sequence[int], timeout_s: float) -> list[int]:
    """Wait up to `timeout_s` for the processes to exit; return those still running."""
    deadline = time.monotonic() + timeout_s
    pending = list(pids)
    while True:
        for pid in pending:
            _reap(pid)
        pending = [pid for pid in pending if is_running(pid)]
        if not pending or time.monotonic() > deadline:
            return pending
        time.sleep(0.02)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise NetworkError(f"cannot signal process {pid}: {exc}") from exc
