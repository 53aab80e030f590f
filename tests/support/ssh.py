"""SSH into guests from inside a test namespace (paramiko, in-process, via `netns.entered`).

Guests under TCG take 7 to 15 s to boot, much longer when several boot at once, so waits are generous by
default and every attempt uses a short connect timeout.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from tests.support.netns import entered

BOOT_TIMEOUT_S = 300.0
COMMAND_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Result:
    exit_status: int
    stdout: str
    stderr: str


def load_key(path: Path) -> paramiko.PKey:
    """A private key of any type paramiko knows (ed25519, ECDSA, RSA), in OpenSSH or PEM format."""
    return paramiko.PKey.from_path(str(path))


def connect(
    ns: str, host: str, key: Path, *, user: str = "root", timeout: float = 10.0
) -> paramiko.SSHClient:
    """One connection attempt from inside `ns`; the socket stays in `ns` for its life."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # host keys are new with every guest
    with entered(ns):
        sock = socket.create_connection((host, 22), timeout=timeout)
    try:
        client.connect(
            host,
            username=user,
            pkey=load_key(key),
            sock=sock,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            allow_agent=False,
            look_for_keys=False,
        )
    except BaseException:
        client.close()
        sock.close()
        raise
    return client


def wait_for_ssh(
    ns: str, host: str, key: Path, *, user: str = "root", timeout: float = BOOT_TIMEOUT_S
) -> paramiko.SSHClient:
    """Retry until a login works; raises TimeoutError with the last failure after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            return connect(ns, host, key, user=user, timeout=5.0)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            last = exc
            time.sleep(1.0)
    raise TimeoutError(f"no SSH login to {user}@{host} in {ns} within {timeout:.0f} s; last error: {last!r}")


def run(client: paramiko.SSHClient, command: str, *, timeout: float = COMMAND_TIMEOUT_S) -> Result:
    """Run one command on an open connection and collect its output."""
    _, stdout, stderr = client.exec_command(command, timeout=timeout)
    out = stdout.read().decode(errors="replace")
    err = stderr.read().decode(errors="replace")
    return Result(stdout.channel.recv_exit_status(), out, err)


def wait_and_run(
    ns: str, host: str, key: Path, command: str, *, user: str = "root", timeout: float = BOOT_TIMEOUT_S
) -> str:
    """Wait for SSH, run `command`, disconnect; returns its stdout and raises if it exited non-zero."""
    client = wait_for_ssh(ns, host, key, user=user, timeout=timeout)
    try:
        result = run(client, command)
    finally:
        client.close()
    if result.exit_status != 0:
        raise RuntimeError(f"{command!r} on {host} exited {result.exit_status}: {result.stderr.strip()}")
    return result.stdout
