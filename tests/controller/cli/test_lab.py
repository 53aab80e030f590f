"""`labcloud lab` for real (no guests): the fabric, a controller and two agents in namespaces, status, exec, and a
teardown that leaves nothing behind even after a daemon was killed (the fixture checks the leaks)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import pytest

from controller.cli import daemon
from controller.cli import lab as lab_cli
from controller.cli.client import ApiClient, Credentials
from controller.cli.home import Home
from tests.support.image import tinycloud_image
from tests.support.lab import Lab, running_lab

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with running_lab(hosts=2, azs=1, extra_env={"LABCLOUD_SEED_IMAGE": str(tinycloud_image())}) as made:
        yield made


def test_hosts_register_over_the_underlay_with_their_addresses_and_zones(lab: Lab) -> None:
    status = lab.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "problem:" not in status.stdout
    members_part, hosts_part = status.stdout.split("hosts (as the controller sees them):")
    members = {line.split()[0]: line.split() for line in members_part.splitlines() if line.startswith("h")}
    assert members["h1"][:5] == ["h1", f"lcl-{lab.lab.lab_id}-h1", "ok", "10.254.0.11", "lab-1a"]
    # The controller's own view (the admin API, asked from inside its namespace).
    ecs_hosts = [line.split() for line in hosts_part.splitlines()]
    assert ["h1", "lab-1a", "up", "10.254.0.11", "http://10.254.0.11:8779"] in ecs_hosts
    assert ["h2", "lab-1a", "up", "10.254.0.12", "http://10.254.0.12:8779"] in ecs_hosts

    again = lab.cli("up", "--hosts", "2")
    assert again.returncode == 0 and "already up" in again.stdout

    # Every host joined with a join token of its own, issued for its host id: none holds the shared one.
    shared = Home(lab.home_of("ctl")).join_token.read_text()
    for member in ("h1", "h2"):
        own = Home(lab.home_of(member)).join_token
        assert own.stat().st_mode & 0o777 == 0o600 and own.read_text() != shared
    with lab.entered(), ApiClient(Credentials.load(Home(lab.home_of("ctl")).credentials)) as client:
        issued = client.get("/v1/admin/join-tokens")["join_tokens"]
        registered = {h["id"]: h for h in client.get("/v1/admin/hosts")["hosts"]}
    assert sorted((t["host_id"], t["status"]) for t in issued) == [("h1", "bound"), ("h2", "bound")]
    # The fabric is the external network too: each host reports its address there (EIPs may bind to its ports).
    external = {h: registered[h]["external_ip"] for h in ("h1", "h2")}
    assert external == {"h1": "10.254.0.51", "h2": "10.254.0.52"}


def test_members_are_joined_by_a_1550_byte_underlay_and_the_external_namespace_has_its_address(
    lab: Lab,
) -> None:
    for member in ("ext", "ctl", "h1", "h2"):
        (link,) = lab.ip_json(member, "link", "show", "ul0")
        assert link["mtu"] == 1550 and "UP" in link["flags"]
    (ext,) = lab.ip_json("ext", "-4", "addr", "show", "ul0")
    assert [(a["local"], a["prefixlen"]) for a in ext["addr_info"]] == [("10.254.0.1", 24)]
    out = lab.cli("exec", "--on", "h2", "--", "busybox", "ping", "-c", "1", "-W", "5", "10.254.0.1")
    assert out.returncode == 0, out.stderr
    fabric = lab.ip_json("ctl", "route", "show")  # nothing but the underlay itself
    assert [r["dst"] for r in fabric] == ["10.254.0.0/24"]


def test_status_reports_a_dead_agent(lab: Lab) -> None:
    home = lab.lab.member("h2").home
    assert home is not None
    pid = daemon.read_pid(home / "run" / "agent.pid")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert daemon.wait_gone(pid, 30.0)
    status = lab.cli("status")
    assert status.returncode == 3
    assert "problem: h2/agent is not running" in status.stdout
    assert json.loads((lab.root / "lab.json").read_text())["hosts"] == 2

    # Started again, it joins with the same token and API secret: the controller takes it back.
    before = {h["id"]: h["last_heartbeat"] for h in lab_cli.hosts(lab.lab)}
    lab.start_agent("h2")
    deadline = time.monotonic() + 300
    while (status := lab.cli("status")).returncode != 0:
        assert time.monotonic() < deadline, status.stdout
        time.sleep(1)
    after = {h["id"]: h for h in lab_cli.hosts(lab.lab)}
    assert after["h2"]["state"] == "up" and after["h2"]["last_heartbeat"] != before["h2"]
