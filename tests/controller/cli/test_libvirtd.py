"""The private libvirtd: its configuration, and a real daemon started and stopped inside a test namespace."""

from __future__ import annotations

import grp
import os
import stat
import subprocess
from pathlib import Path

import pytest

from controller.cli import daemon
from controller.cli.libvirtd import BIND_MOUNTS, PrivateLibvirtd, render_libvirtd_conf, running_domains
from tests.support import netns


def test_the_daemon_listens_only_on_its_own_socket_and_logs_to_the_home(tmp_path: Path) -> None:
    conf = render_libvirtd_conf(tmp_path / "libvirt", tmp_path / "logs" / "libvirtd.log")
    assert f'unix_sock_dir = "{tmp_path}/libvirt/run"' in conf
    assert 'unix_sock_rw_perms = "0700"' in conf
    assert 'auth_unix_rw = "none"' in conf
    assert f'log_outputs = "3:file:{tmp_path}/logs/libvirtd.log"' in conf


def test_the_launcher_binds_all_five_directories_then_execs_libvirtd(tmp_path: Path) -> None:
    lv = PrivateLibvirtd(
        tmp_path / "libvirt", tmp_path / "run" / "libvirtd.pid", tmp_path / "l.log", tmp_path
    )
    argv = lv.launch_argv()
    assert argv[1:5] == ["--mount", "--propagation", "slave", "--"]
    for sub, target in BIND_MOUNTS:
        index = argv.index(str(tmp_path / "libvirt" / sub))
        assert argv[index + 1] == target
    assert argv[-4:-2] == [argv[-4], "--daemon"] and argv[-2:] == [
        "--pid-file",
        str(tmp_path / "run/libvirtd.pid"),
    ]
    assert lv.uri == f"qemu:///system?socket={tmp_path}/libvirt/run/libvirt-sock"
    if "/dev/kvm" in argv:  # this host's /dev/kvm is root-only: a group-accessible stand-in is bound over it
        node = os.stat(argv[argv.index("/dev/kvm") - 1])
        assert stat.S_ISCHR(node.st_mode) and node.st_rdev == os.stat("/dev/kvm").st_rdev
        assert (node.st_gid, stat.S_IMODE(node.st_mode)) == (grp.getgrnam("kvm").gr_gid, 0o660)


@pytest.mark.netns
def test_a_private_libvirtd_runs_inside_the_namespace_and_stops(tmp_path: Path) -> None:
    home = tmp_path / "home"
    lv = PrivateLibvirtd(
        home / "libvirt", home / "run" / "libvirtd.pid", home / "logs" / "libvirtd.log", home
    )
    system_socket = Path("/run/libvirt/libvirt-sock")
    system_socket_before = system_socket.exists()
    with netns.namespace() as ns:
        env = dict(os.environ, LABCLOUD_HOME=str(home))
        # Forked from a thread inside the namespace, the daemon lives there too.
        with netns.entered(ns):
            pid = lv.start(env, timeout=300)
        try:
            assert pid in netns.pids(ns)
            assert lv.pid() == pid
            assert running_domains(lv.uri) == []
            nets = subprocess.run(
                ["virsh", "-c", lv.uri, "net-list", "--all", "--name"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert nets.strip() == "", "the private daemon defines no networks (never `default`)"
            assert (home / "libvirt" / "etc" / "qemu.conf").read_text().count('stdio_handler = "file"') == 1
            assert system_socket.exists() == system_socket_before, "the system socket path is untouched"
        finally:
            stopped = lv.stop(timeout=60)
        assert stopped == pid
        assert not daemon.is_alive(pid)
        assert netns.pids(ns) == []
