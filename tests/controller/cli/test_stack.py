"""What `labcloud up` hands its daemons, and the guards of `down --purge` (no daemons are started)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from controller.cli.errors import CliError
from controller.cli.home import Home
from controller.cli.stack import Stack
from controller.cli.up import _remove_home


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stack:
    for name in (
        "LABCLOUD_LIBVIRT_URI",
        "LABCLOUD_LISTEN_HOST",
        "LABCLOUD_LISTEN_PORT",
        "LABCLOUD_AGENT_HOST_ID",
        "LABCLOUD_AGENT_STATE_DIR",
        "LABCLOUD_AGENT_LISTEN_HOST",
        "LABCLOUD_AGENT_LISTEN_PORT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    return Stack.from_env(Home(tmp_path / "home"))


def test_the_agent_is_pointed_at_the_controller_and_the_private_libvirtd(
    stack: Stack, tmp_path: Path
) -> None:
    env = stack.agent_env("secret-token")
    home = tmp_path / "home"
    assert env["LABCLOUD_HOME"] == str(home)
    assert env["LABCLOUD_AGENT_CONTROLLER_URL"] == "http://127.0.0.1:8778"
    assert env["LABCLOUD_AGENT_JOIN_TOKEN"] == "secret-token"
    assert env["LABCLOUD_AGENT_LIBVIRT_URI"] == f"qemu:///system?socket={home}/libvirt/run/libvirt-sock"
    assert env["LABCLOUD_AGENT_STATE_DIR"] == str(home / "agent")
    assert (env["LABCLOUD_AGENT_LISTEN_HOST"], env["LABCLOUD_AGENT_LISTEN_PORT"]) == ("127.0.0.1", "8779")
    assert env["PATH"].split(":")[:2] == ["/usr/bin", "/bin"] and "/usr/sbin" in env["PATH"].split(":")


def test_the_controller_gets_its_listen_address_and_the_seed_image(stack: Stack, tmp_path: Path) -> None:
    env = stack.controller_env(tmp_path / "img.qcow2")
    assert (env["LABCLOUD_LISTEN_HOST"], env["LABCLOUD_LISTEN_PORT"]) == ("127.0.0.1", "8778")
    assert env["LABCLOUD_SEED_IMAGE"] == str(tmp_path / "img.qcow2")
    assert stack.controller_argv()[1:] == ["-P", "-m", "controller"]


def test_the_daemons_import_their_own_packages_from_a_home_with_same_named_directories(stack: Stack) -> None:
    # The home holds agent/ and controller/ (state); the daemons run there and must not import those.
    home = stack.home.root
    (home / "agent" / "net").mkdir(parents=True, exist_ok=True)
    (home / "controller" / "api").mkdir(parents=True, exist_ok=True)
    for argv, module in (
        (stack.agent_argv(), "agent.net.names"),
        (stack.controller_argv(), "controller.api"),
    ):
        probe = [argv[0], *argv[1:-2], "-c", f"import {module}"]
        done = subprocess.run(probe, cwd=home, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_an_external_libvirt_replaces_the_private_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABCLOUD_LIBVIRT_URI", "qemu:///system")
    stack = Stack.from_env(Home(tmp_path / "home"))
    assert stack.daemons() == ["controller", "agent"]
    assert stack.agent_env("t")["LABCLOUD_AGENT_LIBVIRT_URI"] == "qemu:///system"


def test_a_wildcard_listen_address_is_reached_on_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABCLOUD_LISTEN_HOST", "0.0.0.0")
    monkeypatch.setenv("LABCLOUD_LISTEN_PORT", "9000")
    assert Stack.from_env(Home(tmp_path / "home")).controller_url == "http://127.0.0.1:9000"


def test_purge_removes_only_what_looks_like_a_labcloud_home(tmp_path: Path) -> None:
    stranger = tmp_path / "documents"
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("precious")
    with pytest.raises(CliError):
        _remove_home(stranger)
    assert (stranger / "thesis.tex").exists()
    with pytest.raises(CliError):
        _remove_home(Path("/"))
    home = tmp_path / "home"
    Home(home).ensure()
    _remove_home(home)
    assert not home.exists()
