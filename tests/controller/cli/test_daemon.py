"""Process management for `labcloud up`, with real processes."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from controller.cli import daemon

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
    "time.sleep(600)",
]


def _spawn(tmp_path: Path, argv: list[str], home: Path) -> int:
    env = dict(os.environ, LABCLOUD_HOME=str(home))
    return daemon.spawn(
        argv, env=env, log_file=tmp_path / "logs" / "d.log", pid_file=tmp_path / "run" / "d.pid"
    )


def test_spawn_records_a_detached_process_that_stop_ends(tmp_path: Path) -> None:
    home = tmp_path / "home"
    pid = _spawn(tmp_path, SLEEPER, home)
    try:
        assert daemon.read_pid(tmp_path / "run" / "d.pid") == pid
        assert daemon.running_pid(tmp_path / "run" / "d.pid", home) == pid
        assert os.getsid(pid) == pid, "the daemon leads a session of its own"
        assert daemon.stop(tmp_path / "run" / "d.pid", home) == pid
        assert not daemon.is_alive(pid)
        assert not (tmp_path / "run" / "d.pid").exists()
    finally:
        daemon.terminate(pid, timeout=1.0)


def test_a_process_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    pid = _spawn(tmp_path, STUBBORN, home)
    try:
        deadline = time.monotonic() + 60
        while "ready" not in (tmp_path / "logs" / "d.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        daemon.terminate(pid, timeout=0.5)
        assert not daemon.is_alive(pid)
    finally:
        daemon.terminate(pid, timeout=0.5)


def test_a_pid_file_of_another_home_or_a_dead_process_is_not_ours(tmp_path: Path) -> None:
    home = tmp_path / "home"
    pid = _spawn(tmp_path, SLEEPER, home)
    try:
        assert daemon.running_pid(tmp_path / "run" / "d.pid", tmp_path / "other-home") is None
        assert daemon.stop(tmp_path / "run" / "d.pid", tmp_path / "other-home") is None
        assert daemon.is_alive(pid), "stop must not touch a process of another home"
    finally:
        daemon.terminate(pid, timeout=1.0)
    assert daemon.running_pid(tmp_path / "run" / "d.pid", home) is None


def test_garbage_in_a_pid_file_is_no_pid(tmp_path: Path) -> None:
    (tmp_path / "x.pid").write_text("not a pid\n")
    assert daemon.read_pid(tmp_path / "x.pid") is None
    assert daemon.read_pid(tmp_path / "missing.pid") is None


def test_tail_returns_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert daemon.tail(log, 3) == "line 97\nline 98\nline 99"
    assert "cannot read" in daemon.tail(tmp_path / "missing.log")
