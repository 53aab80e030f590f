"""A whole labcloud (`labcloud up`) inside a fresh test namespace, and a finalizer that proves nothing leaked.

Each cloud gets its own namespace (`lct-…`) and its own `LABCLOUD_HOME` under /tmp, so several run side by
side. `close()` runs `labcloud down --purge`, then looks for anything left: processes in the namespace (qemu
means a leaked domain), processes that carry the home in their environment or command line (router holders
and dnsmasq live in namespaces of their own), and every process in those namespaces. It kills them all,
deletes the namespace and the home, and returns what it had to clean up, so the fixture can fail loudly.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huaweicloudsdkcbr.v1 import CbrClient
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkecs.v2 import EcsClient
from huaweicloudsdkeip.v2 import EipClient
from huaweicloudsdkevs.v2 import EvsClient
from huaweicloudsdkims.v2 import ImsClient
from huaweicloudsdkvpc.v2 import VpcClient

from controller.cli import daemon
from tests.support import netns

REPO = Path(__file__).resolve().parents[2]
LABCLOUD = REPO / ".venv" / "bin" / "labcloud"
UP_TIMEOUT_S = 900.0  # the first `up` may build the guest image
CLI_TIMEOUT_S = 1800.0
# Variables a developer may have set for their own cloud; a test cloud must not inherit them.
_KEPT_LABCLOUD_VARS = ("LABCLOUD_IMAGE_CACHE",)


class CliFailed(AssertionError):
    def __init__(self, argv: tuple[str, ...], done: subprocess.CompletedProcess[str]) -> None:
        super().__init__(
            f"labcloud {' '.join(argv)} exited {done.returncode}\n"
            f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )
        self.result = done


class InNamespace:
    """Wraps an SDK client so every method call runs with the calling thread inside `ns`."""

    def __init__(self, target: Any, ns: str) -> None:
        self._target = target
        self._ns = ns

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            with netns.entered(self._ns):
                return attr(*args, **kwargs)

        return call


def namespaced_client(client_class: Any, *, endpoint: str, ak: str, sk: str, project_id: str, ns: str) -> Any:
    """An official SDK client for one project's AK/SK whose every call runs inside the namespace `ns`."""
    client = (
        client_class.new_builder()
        .with_http_config(HttpConfig.get_default_config())
        .with_credentials(BasicCredentials(ak, sk, project_id))
        .with_endpoints([endpoint])
        .build()
    )
    return InNamespace(client, ns)


class SdkClients:
    """The official SDK's clients for a test cloud; a class using it says how one is built (`_client`)."""

    def _client(self, client_class: Any) -> Any:
        raise NotImplementedError

    def ecs(self) -> EcsClient:
        return self._client(EcsClient)  # type: ignore[no-any-return]

    def vpc(self) -> VpcClient:
        return self._client(VpcClient)  # type: ignore[no-any-return]

    def ims(self) -> ImsClient:
        return self._client(ImsClient)  # type: ignore[no-any-return]

    def evs(self) -> EvsClient:
        return self._client(EvsClient)  # type: ignore[no-any-return]

    def cbr(self) -> CbrClient:
        return self._client(CbrClient)  # type: ignore[no-any-return]

    def eip(self) -> EipClient:
        return self._client(EipClient)  # type: ignore[no-any-return]


@dataclass
class Cloud(SdkClients):
    ns: str
    home: Path
    tmp: Path
    endpoint: str = ""
    ak: str = ""
    sk: str = ""
    project_id: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    up_result: subprocess.CompletedProcess[str] | None = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("LABCLOUD_") or k in _KEPT_LABCLOUD_VARS
        }
        env["LABCLOUD_HOME"] = str(self.home)
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        env.update(self.extra_env)
        return env

    def cli(self, *argv: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run the `labcloud` CLI inside this cloud's namespace; the caller checks the exit status."""
        return netns.run_in(self.ns, [str(LABCLOUD), *argv], env=self.env(), check=False, timeout=timeout)

    def run(self, *argv: str, timeout: float = CLI_TIMEOUT_S) -> str:
        """Run the `labcloud` CLI inside this cloud's namespace; its stdout (CliFailed on a non-zero exit)."""
        done = self.cli(*argv, timeout=timeout)
        if done.returncode != 0:
            raise CliFailed(argv, done)
        return done.stdout

    def entered(self) -> AbstractContextManager[None]:
        return netns.entered(self.ns)

    def load_credentials(self) -> dict[str, str]:
        doc: dict[str, str] = json.loads((self.home / "credentials.json").read_text())
        self.endpoint, self.ak, self.sk, self.project_id = (
            doc["endpoint"],
            doc["ak"],
            doc["sk"],
            doc["project_id"],
        )
        return doc

    def _client(self, client_class: Any) -> Any:
        return namespaced_client(
            client_class,
            endpoint=self.endpoint,
            ak=self.ak,
            sk=self.sk,
            project_id=self.project_id,
            ns=self.ns,
        )

    def close(self) -> list[str]:
        """Tear the cloud down; returns what had leaked (empty when everything was clean)."""
        problems: list[str] = []
        if self.home.exists():
            down = self.cli("down", "--purge", timeout=600.0)
            if down.returncode != 0:
                problems.append(f"`labcloud down --purge` failed ({down.returncode}): {down.stderr.strip()}")
        leftovers = leftover_processes(self.ns, self.home)
        if leftovers:
            problems.append(
                "leaked processes: " + "; ".join(f"{pid} {cmd}" for pid, cmd in leftovers.items())
            )
            netns.kill_all(list(leftovers))
        try:
            netns.delete(self.ns)
        except subprocess.CalledProcessError as exc:
            problems.append(f"cannot delete namespace {self.ns}: {exc.stderr}")
        if netns.exists(self.ns):
            problems.append(f"namespace {self.ns} still exists")
        shutil.rmtree(self.tmp, ignore_errors=True)
        return problems


def new_cloud(extra_env: dict[str, str] | None = None) -> Cloud:
    """A namespace and a home for a cloud that is not started yet; the caller must `close()` it."""
    tmp = Path(tempfile.mkdtemp(prefix="lct-cloud-", dir="/tmp"))
    tmp.chmod(0o755)  # qemu runs as libvirt-qemu and must reach the disks below the home
    return Cloud(ns=netns.create(), home=tmp / "home", tmp=tmp, extra_env=dict(extra_env or {}))


def start_cloud(extra_env: dict[str, str] | None = None, up_timeout: float = UP_TIMEOUT_S) -> Cloud:
    """`labcloud up` in a fresh namespace with a fresh home; the caller must `close()` it."""
    cloud = new_cloud(extra_env)
    try:
        cloud.up_result = cloud.cli("up", timeout=up_timeout)
        if cloud.up_result.returncode != 0:
            raise RuntimeError(
                f"labcloud up failed ({cloud.up_result.returncode}):\n{cloud.up_result.stdout}\n"
                f"{cloud.up_result.stderr}"
            )
        cloud.load_credentials()
    except BaseException:
        problems = cloud.close()
        if problems:
            sys.stderr.write("while cleaning up a cloud that failed to start: " + "; ".join(problems) + "\n")
        raise
    return cloud


def leftover_processes(ns: str, home: Path) -> dict[int, str]:
    """Processes that belong to this cloud: in its namespace, marked with its home, or sharing their netns."""
    marker = str(home).encode()
    own_netns = netns.netns_inode("self")
    found: set[int] = set(netns.pids(ns)) if netns.exists(ns) else set()
    namespaces: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker in environ or marker in cmdline:
            found.add(int(entry))
            inode = netns.netns_inode(entry)
            if inode is not None and inode != own_netns:
                namespaces.add(inode)
    for inode in namespaces:
        found.update(netns.pids_in_inode(inode))
    return {pid: _cmdline(pid) for pid in sorted(found) if daemon.is_alive(pid)}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


@dataclass
class CloudFactory:
    """Starts clouds on demand and closes every one of them at the end."""

    default_env: dict[str, str] = field(default_factory=dict)
    clouds: list[Cloud] = field(default_factory=list)

    def __call__(self, extra_env: dict[str, str] | None = None, *, start: bool = True) -> Cloud:
        """A started cloud, or with `start=False` just its namespace and home (run `up` yourself)."""
        env = {**self.default_env, **(extra_env or {})}
        cloud = start_cloud(env) if start else new_cloud(env)
        self.clouds.append(cloud)
        return cloud

    def close(self) -> list[str]:
        problems: list[str] = []
        for cloud in reversed(self.clouds):
            problems += [f"{cloud.ns}: {p}" for p in cloud.close()]
        self.clouds.clear()
        return problems


def closing(factory: CloudFactory) -> Iterator[CloudFactory]:
    """Fixture body: yield the factory, then fail loudly if closing found leaks."""
    try:
        yield factory
    finally:
        problems = factory.close()
        if problems:
            raise AssertionError("the test cloud leaked:\n" + "\n".join(problems))
