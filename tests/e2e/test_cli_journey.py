"""The same journey through the `labcloud` CLI: key pair, create --wait, ssh by name, power actions, delete."""

from __future__ import annotations

import time
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

SSH_WAIT_S = 300.0


def _ssh_hostname(cloud: Any, name: str) -> str:
    """`labcloud ssh NAME -- hostname`, retried while the guest boots."""
    deadline = time.monotonic() + SSH_WAIT_S
    while True:
        done = cloud.cli("ssh", name, "--", "hostname")
        if done.returncode == 0:
            return str(done.stdout).strip()
        if time.monotonic() > deadline:
            raise AssertionError(f"labcloud ssh {name} kept failing: {done.stderr}")
        time.sleep(2)


def _status(cloud: Any, name: str) -> str:
    for line in cloud.run("server", "list").splitlines():
        fields = line.split()
        if name in fields:
            return next(
                f for f in fields if f in ("BUILD", "ACTIVE", "SHUTOFF", "REBOOT", "HARD_REBOOT", "ERROR")
            )
    return "absent"


def test_cli_journey(cloud: Any) -> None:
    cloud.run("keypair", "create", "clikey")
    assert (cloud.home / "keys" / "clikey.pem").stat().st_mode & 0o777 == 0o600
    created = cloud.run("server", "create", "--name", "cli-1", "--key", "clikey", "--wait")
    assert "cli-1" in created
    assert _status(cloud, "cli-1") == "ACTIVE"
    assert _ssh_hostname(cloud, "cli-1") == "cli-1"

    cloud.run("server", "stop", "cli-1", "--wait")
    assert _status(cloud, "cli-1") == "SHUTOFF"
    cloud.run("server", "start", "cli-1", "--wait")
    assert _status(cloud, "cli-1") == "ACTIVE"
    cloud.run("server", "reboot", "--hard", "cli-1", "--wait")
    assert _ssh_hostname(cloud, "cli-1") == "cli-1"

    refused = cloud.cli("server", "start", "cli-1")
    assert refused.returncode == 1 and "error Ecs." in refused.stderr + refused.stdout

    cloud.run("server", "delete", "cli-1", "--wait")
    assert _status(cloud, "cli-1") == "absent"
