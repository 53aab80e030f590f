"""Crash a cloud's daemons the hard way: find a `labcloud` daemon of a home and `kill -9` it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from controller.cli import daemon
from controller.cli.home import Home

KILL_WAIT_S = 30.0


def daemon_pid(home: Path, name: str) -> int:
    """The pid of the running daemon `name` (controller, agent, …) that `labcloud up` started for `home`."""
    pid = daemon.running_pid(Home(home).pid_file(name), home)
    assert pid is not None, f"the {name} of {home} is not running"
    return pid


def kill_9(pid: int, what: str) -> None:
    """SIGKILL `pid` and wait until it is gone (or a zombie nobody reaps)."""
    os.kill(pid, signal.SIGKILL)
    assert daemon.wait_gone(pid, KILL_WAIT_S), f"{what} (pid {pid}) survived SIGKILL"
