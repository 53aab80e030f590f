"""Background processes for `labcloud up`: start in their own session, track by pid file, stop politely.

A pid file alone is weak evidence (pids are reused), so a process counts as ours only while its environment
still carries `LABCLOUD_HOME=<this home>`, which every daemon `up` starts inherits.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0


def read_pid(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def is_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (nobody may reap daemons without an init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the command name, which is in parentheses and may contain spaces.
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def belongs_to(pid: int, home: Path) -> bool:
    environ = environ_of(pid)
    deadline = time.monotonic() + 2.0
    # A process in the middle of execve shows an empty environment for a moment (the kernel fills it in after
    # closing the CLOEXEC pipe that tells Popen the exec succeeded); ours always have one.
    while not environ and is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
        environ = environ_of(pid)
    return is_alive(pid) and environ.get("LABCLOUD_HOME") == str(home)


def running_pid(pid_file: Path, home: Path) -> int | None:
    """The pid in `pid_file` if that process is alive and was started for `home`."""
    pid = read_pid(pid_file)
    return pid if pid is not None and belongs_to(pid, home) else None


def spawn(
    argv: Sequence[str], *, env: Mapping[str, str], log_file: Path, pid_file: Path, cwd: Path | None = None
) -> int:
    """Start `argv` detached in a new session, output appended to `log_file`, and record its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd=cwd,
        )
    write_pid(pid_file, proc.pid)
    log.info("started %s as pid %s (log %s)", argv[0], proc.pid, log_file)
    return proc.pid


def write_pid(pid_file: Path, pid: int) -> None:
    tmp = pid_file.with_name(f".{pid_file.name}.tmp")
    tmp.write_text(f"{pid}\n")
    os.replace(tmp, pid_file)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def terminate(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if wait_gone(pid, timeout):
        return
    log.warning("pid %s ignored SIGTERM for %.0f s; killing it", pid, timeout)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait_gone(pid, 10.0)


def stop(pid_file: Path, home: Path, timeout: float = STOP_TIMEOUT_S) -> int | None:
    """Stop the daemon behind `pid_file` if it is ours and alive; returns the pid it stopped."""
    pid = running_pid(pid_file, home)
    if pid is not None:
        terminate(pid, timeout)
    pid_file.unlink(missing_ok=True)
    return pid


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log, for error messages."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    return "\n".join(data.splitlines()[-lines:])
