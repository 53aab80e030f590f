"""`labcloud up`, `status` and `down` for real: whole clouds inside fresh namespaces, checked from outside."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkecs.v2 import ListFlavorsRequest
from huaweicloudsdkims.v2 import ListImagesRequest
from huaweicloudsdkvpc.v2 import ListVpcsRequest

from controller.cli.libvirtd import PrivateLibvirtd
from tests.support import netns
from tests.support.cloud import LABCLOUD, Cloud, CloudFactory

pytestmark = pytest.mark.e2e

DAEMONS = ("libvirtd", "controller", "agent")


def expected_accelerator() -> str:
    """An oracle independent of the agent: without vmx/svm in the CPU flags, guests can only run under TCG."""
    flags = Path("/proc/cpuinfo").read_text().split()
    return "tcg" if "vmx" not in flags and "svm" not in flags else "kvm"


def host_rows(status_output: str) -> list[list[str]]:
    lines = status_output.splitlines()
    start = lines.index("hosts:") + 2  # skip the header row
    return [line.split() for line in lines[start:] if line.strip()]


def test_up_writes_private_credentials_and_is_idempotent(cloud_factory: CloudFactory) -> None:
    cloud = cloud_factory({"LABCLOUD_SEED_IMAGE": ""})  # `up` runs the image recipe (a cache hit by now)
    assert cloud.up_result is not None
    assert "labcloud is up" in cloud.up_result.stdout
    assert f"accelerator:   {expected_accelerator()}" in cloud.up_result.stdout
    creds_file = cloud.home / "credentials.json"
    assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
    creds = json.loads(creds_file.read_text())
    assert creds["endpoint"] == "http://127.0.0.1:8778"
    assert creds["ak"] and creds["sk"] and creds["project_id"]
    pids = {name: int((cloud.home / "run" / f"{name}.pid").read_text()) for name in DAEMONS}
    assert set(pids.values()) <= set(netns.pids(cloud.ns)), "every daemon runs inside the cloud's namespace"

    again = cloud.cli("up")
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    assert {name: int((cloud.home / "run" / f"{name}.pid").read_text()) for name in DAEMONS} == pids

    status = cloud.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"accelerator: {expected_accelerator()}" in status.stdout
    hosts = host_rows(status.stdout)
    assert len(hosts) == 1
    assert hosts[0][3] == expected_accelerator() and hosts[0][-1] == "up"
    for name in DAEMONS:
        assert f"{name}" in status.stdout and str(pids[name]) in status.stdout


def test_the_official_sdk_works_against_the_cloud(cloud_factory: CloudFactory) -> None:
    cloud = cloud_factory()
    flavors = cloud.ecs().list_flavors(ListFlavorsRequest()).flavors
    assert flavors and all(f.id and int(f.vcpus) >= 1 and f.ram >= 64 for f in flavors)
    images = cloud.ims().list_images(ListImagesRequest()).images
    assert any(i.visibility == "public" and i.status == "active" for i in images)
    assert cloud.vpc().list_vpcs(ListVpcsRequest()).vpcs == []
    # The CLI sees the same catalogue.
    listed = cloud.run("flavor", "list")
    assert all(f.id in listed for f in flavors)
    assert images[0].id in cloud.run("image", "list")


def test_down_stops_everything_and_up_starts_again(cloud_factory: CloudFactory) -> None:
    cloud = cloud_factory()
    assert len(netns.pids(cloud.ns)) >= len(DAEMONS)
    cloud.run("down")
    assert netns.pids(cloud.ns) == [], "no process may be left in the namespace"
    assert not list((cloud.home / "run").glob("*.pid"))
    assert (cloud.home / "credentials.json").exists(), "plain down keeps the home"
    stopped = cloud.cli("status")
    assert stopped.returncode == 3
    assert all(f"{name}" in stopped.stdout for name in DAEMONS) and "stopped" in stopped.stdout

    cloud.run("up")
    assert cloud.cli("status").returncode == 0
    assert json.loads((cloud.home / "credentials.json").read_text())["ak"] == cloud.ak, "credentials survive"


def test_two_clouds_on_one_machine_do_not_collide(cloud_factory: CloudFactory) -> None:
    first, second = cloud_factory(), cloud_factory()
    assert first.project_id != second.project_id and first.ak != second.ak
    assert set(netns.pids(first.ns)).isdisjoint(netns.pids(second.ns))
    for cloud in (first, second):
        assert cloud.cli("status").returncode == 0
        assert cloud.ecs().list_flavors(ListFlavorsRequest()).flavors

    # Same address in both namespaces, different clouds: one's key is unknown to the other.
    stranger = Cloud(
        ns=second.ns,
        home=second.home,
        tmp=second.tmp,
        endpoint=second.endpoint,
        ak=first.ak,
        sk=first.sk,
        project_id=first.project_id,
    )
    with pytest.raises(ClientRequestException) as info:
        stranger.ecs().list_flavors(ListFlavorsRequest())
    assert info.value.status_code == 401

    first.run("down", "--purge")
    assert not first.home.exists()
    assert netns.pids(first.ns) == []
    assert second.cli("status").returncode == 0
    assert second.ecs().list_flavors(ListFlavorsRequest()).flavors


def test_a_failing_up_shows_the_log_and_stops_what_it_started(cloud_factory: CloudFactory) -> None:
    # The controller cannot open this database, so it dies at start; libvirtd was already running by then.
    cloud = cloud_factory({"LABCLOUD_DATABASE_URL": "sqlite:////nonexistent-dir/labcloud.db"}, start=False)
    failed = cloud.cli("up")
    assert failed.returncode == 1
    assert failed.stderr.startswith("error controller: the controller exited before it could answer")
    assert "nonexistent-dir" in failed.stderr or "unable to open database" in failed.stderr, "the log's tail"
    assert "stopping what it started: controller, libvirtd" in failed.stdout
    assert netns.pids(cloud.ns) == []


def test_up_uses_an_existing_libvirt_when_told_and_leaves_it_running(cloud_factory: CloudFactory) -> None:
    cloud = cloud_factory(start=False)
    ext_home = cloud.tmp / "external"
    external = PrivateLibvirtd(
        ext_home / "libvirt", ext_home / "libvirtd.pid", ext_home / "libvirtd.log", ext_home
    )
    with netns.entered(cloud.ns):
        external.start(dict(os.environ, LABCLOUD_HOME=str(ext_home)), timeout=300)
    try:
        cloud.extra_env["LABCLOUD_LIBVIRT_URI"] = external.uri
        cloud.run("up")
        assert not (cloud.home / "run" / "libvirtd.pid").exists(), "no private libvirtd of its own"
        assert not (cloud.home / "libvirt").exists()
        status = cloud.cli("status")
        assert status.returncode == 0, status.stdout
        rows = [line.split() for line in status.stdout.splitlines()]
        assert ["libvirtd", "-", "external", external.uri] in rows
        cloud.run("down")
        assert external.pid() is not None, "down leaves a libvirtd it did not start alone"
        assert netns.pids(cloud.ns) == [external.pid()]
    finally:
        external.stop()


def test_up_brings_the_loopback_of_a_fresh_namespace_up(cloud_factory: CloudFactory) -> None:
    cloud = cloud_factory(start=False)
    subprocess.run(["ip", "-n", cloud.ns, "link", "set", "lo", "down"], check=True)
    cloud.run("up")
    assert cloud.cli("status").returncode == 0


def test_a_second_home_in_the_same_namespace_is_refused_clearly(cloud_factory: CloudFactory) -> None:
    cloud = cloud_factory()
    env = {**cloud.env(), "LABCLOUD_HOME": str(cloud.tmp / "second")}
    second = netns.run_in(cloud.ns, [str(LABCLOUD), "up"], env=env, check=False)
    assert second.returncode == 1
    assert second.stderr.startswith("error controller: cannot listen on 127.0.0.1:8778")
    assert "stopping what it started: libvirtd" in second.stdout
    assert not list((cloud.tmp / "second" / "run").glob("*.pid"))
    assert cloud.cli("status").returncode == 0, "the first cloud is untouched"
