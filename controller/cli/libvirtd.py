"""A private libvirtd per labcloud home (../shared/GUEST.md §3).

It runs in its own mount namespace where five directories of the home are bind-mounted over libvirt's
system paths, so it never touches the system daemon's sockets, configuration or domains, and it lives in
whatever network namespace `labcloud up` runs in (its qemu processes and taps too). No virtlogd: qemu writes
its stdio to files.
"""

from __future__ import annotations

import grp
import logging
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

from controller.cli import daemon
from controller.cli.errors import CliError

log = logging.getLogger(__name__)

# home subdirectory -> the system path it replaces inside the daemon's mount namespace
BIND_MOUNTS = (
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
    ("etc", "/etc/libvirt"),
)
KVM_DEVICE = "/dev/kvm"
SOCKET_NAME = "libvirt-sock"
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL

# Mount each bind pair given as arguments, then replace the shell with the daemon (argv after "--").
_LAUNCHER = """
set -e
while [ "$1" != "--" ]; do
    [ -e "$2" ] || mkdir -p "$2"
    mount --bind "$1" "$2"
    shift 2
done
shift
exec "$@"
"""


def render_libvirtd_conf(root: Path, log_file: Path) -> str:
    return (
        "# written by labcloud up: a private daemon, reachable only through its own socket by root\n"
        f'unix_sock_dir = "{root / "run"}"\n'
        'unix_sock_rw_perms = "0700"\n'
        'unix_sock_ro_perms = "0700"\n'
        'auth_unix_ro = "none"\n'
        'auth_unix_rw = "none"\n'
        f'log_outputs = "3:file:{log_file}"\n'
        # The agent's one connection carries every call; the default of 5 calls at once per client made the
        # fifth of five parallel creates wait behind four slow domain starts.
        "max_client_requests = 32\n"
        "max_workers = 32\n"
    )


def render_qemu_conf() -> str:
    # virtlogd is not running: qemu's stdio goes to plain files.
    return '# written by labcloud up\nstdio_handler = "file"\n'


class PrivateLibvirtd:
    """The libvirtd that belongs to one labcloud home."""

    def __init__(self, root: Path, pid_file: Path, log_file: Path, home: Path) -> None:
        self.root = root
        self.pid_file = pid_file
        self.log_file = log_file
        self.home = home

    @property
    def socket(self) -> Path:
        return self.root / "run" / SOCKET_NAME

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    def pid(self) -> int | None:
        return daemon.running_pid(self.pid_file, self.home)

    def write_config(self) -> None:
        for sub, _ in BIND_MOUNTS:
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "etc" / "libvirtd.conf").write_text(render_libvirtd_conf(self.root, self.log_file))
        (self.root / "etc" / "qemu.conf").write_text(render_qemu_conf())

    def launch_argv(self) -> list[str]:
        argv = [_tool("unshare"), "--mount", "--propagation", "slave", "--", "/bin/sh", "-c", _LAUNCHER, "sh"]
        for sub, target in BIND_MOUNTS:
            argv += [str(self.root / sub), target]
        kvm_node = self.kvm_node()
        if kvm_node is not None:
            argv += [str(kvm_node), KVM_DEVICE]
        return [*argv, "--", _tool("libvirtd"), "--daemon", "--pid-file", str(self.pid_file)]

    def kvm_node(self) -> Path | None:
        """A `root:kvm 0660` stand-in for a /dev/kvm that no udev made group-accessible.

        With /dev/kvm root-only, qemu (running as libvirt-qemu) cannot open it while libvirt's capability
        probe (running as root) can; libvirt then re-probes QEMU on nearly every call, about 4 s each. Inside
        the daemon's own mount namespace the node udev would have made replaces it; the host is left as is.
        """
        try:
            st = os.stat(KVM_DEVICE)
            kvm_gid = grp.getgrnam("kvm").gr_gid
        except (FileNotFoundError, KeyError):
            return None
        if not stat.S_ISCHR(st.st_mode) or (st.st_gid == kvm_gid and st.st_mode & 0o060 == 0o060):
            return None
        node = self.root / "kvm"
        self.root.mkdir(parents=True, exist_ok=True)
        node.unlink(missing_ok=True)
        os.mknod(node, stat.S_IFCHR | 0o660, st.st_rdev)
        os.chown(node, 0, kvm_gid)
        os.chmod(node, 0o660)
        return node

    def start(self, env: dict[str, str], timeout: float = 60.0) -> int:
        """Start the daemon and wait until it answers on its socket; returns its pid."""
        if len(str(self.socket)) > UNIX_PATH_MAX:
            raise CliError(
                "libvirtd",
                f"socket path {self.socket} is too long for a unix socket; use a shorter LABCLOUD_HOME",
            )
        self.write_config()
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            # --daemon: the launcher returns once libvirtd has forked and initialised; the daemon is in a new
            # session of its own and writes its pid file.
            done = subprocess.run(
                self.launch_argv(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                timeout=timeout,
                check=False,
            )
        if done.returncode != 0:
            raise CliError(
                "libvirtd",
                f"libvirtd failed to start (exit {done.returncode})",
                detail=daemon.tail(self.log_file),
            )
        deadline = time.monotonic() + timeout
        while True:
            pid = self.pid()
            if pid is not None and self.answers():
                log.info("private libvirtd pid %s at %s", pid, self.uri)
                return pid
            if time.monotonic() >= deadline:
                raise CliError(
                    "libvirtd",
                    f"libvirtd did not answer on {self.socket} within {timeout:.0f} s",
                    detail=daemon.tail(self.log_file),
                )
            time.sleep(0.2)

    def answers(self) -> bool:
        if not self.socket.exists():
            return False
        done = subprocess.run(
            [_tool("virsh"), "-c", self.uri, "version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
        return done.returncode == 0

    def stop(self, timeout: float = daemon.STOP_TIMEOUT_S) -> int | None:
        return daemon.stop(self.pid_file, self.home, timeout)


def running_domains(uri: str) -> list[str]:
    done = _virsh(uri, "list", "--name")
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def all_domains(uri: str) -> list[str]:
    done = _virsh(uri, "list", "--all", "--name")
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def domain_xml(uri: str, name: str) -> str:
    return _virsh(uri, "dumpxml", name).stdout


def destroy_domains(uri: str, names: list[str], *, undefine: bool = False) -> None:
    """Hard power-off (and optionally forget) the given domains; ones already gone are ignored."""
    for name in names:
        _virsh(uri, "destroy", name, check=False)
        if undefine:
            _virsh(uri, "undefine", name, "--nvram", check=False)
        log.info("destroyed domain %s on %s", name, uri)


def _virsh(uri: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [_tool("virsh"), "-q", "-c", uri, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check and done.returncode != 0:
        raise CliError("libvirt", f"virsh {' '.join(args)} on {uri} failed: {done.stderr.strip()}")
    return done


def _tool(name: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise CliError("missing-tool", f"{name} is not installed; run ./install.sh")
    return path
