"""A multi-host lab (`labcloud lab up`) for tests, and a finalizer that proves nothing leaked.

`start_lab()` runs `labcloud lab up` with a fresh directory under /tmp; `Lab.close()` runs `labcloud lab down`
and then checks independently: no namespace of the lab left, no process carrying its directory, the directory
gone, and the root namespace untouched (no underlay address, link, route or rule appeared there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.cli import lab as lab_cli
from controller.cli.lab_plan import UNDERLAY, LabPlan, plan
from tests.support import netns
from tests.support.cloud import LABCLOUD, SdkClients, leftover_processes, namespaced_client
from tests.support.crash import daemon_pid, kill_9

UP_TIMEOUT_S = 900.0


def root_namespace_state() -> dict[str, Any]:
    """What a lab must never change in the root namespace: links, IPv4 addresses, routes and rules."""

    def ip_json(*argv: str) -> Any:
        out = subprocess.run(["ip", "-j", *argv], check=True, capture_output=True, text=True).stdout
        return json.loads(out or "[]")

    return {
        "links": sorted(link["ifname"] for link in ip_json("link", "show")),
        "addresses": sorted(
            f"{a['local']}/{a['prefixlen']}" for e in ip_json("-4", "addr", "show") for a in e["addr_info"]
        ),
        "routes": sorted(
            json.dumps(r, sort_keys=True) for r in ip_json("-4", "route", "show", "table", "all")
        ),
        "rules": sorted(json.dumps(r, sort_keys=True) for r in ip_json("-4", "rule", "show")),
    }


@dataclass
class Lab(SdkClients):
    root: Path
    hosts: int
    azs: int
    extra_env: dict[str, str] = field(default_factory=dict)
    plan: LabPlan | None = None
    root_before: dict[str, Any] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABCLOUD_")}
        env.update(self.extra_env)
        env["NO_PROXY"] = env["no_proxy"] = f"127.0.0.1,localhost,{UNDERLAY}"
        return env

    def cli(self, *argv: str, timeout: float = UP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(LABCLOUD), "lab", "--dir", str(self.root), *argv],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def up(self) -> None:
        self.root_before = root_namespace_state()
        done = self.cli("up", "--hosts", str(self.hosts), "--azs", str(self.azs))
        if done.returncode != 0:
            raise RuntimeError(f"labcloud lab up failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        doc = json.loads((self.root / "lab.json").read_text())
        self.plan = plan(doc["id"], self.root, doc["hosts"], doc["azs"])
        self.credentials = json.loads((self.root / "controller" / "credentials.json").read_text())

    @property
    def lab(self) -> LabPlan:
        assert self.plan is not None, "the lab is not up"
        return self.plan

    def ns(self, member: str) -> str:
        return self.lab.member(member).ns

    def sh(self, member: str, *argv: str) -> str:
        """A command inside a member's namespace (h1, h2, ctl, ext); its stdout."""
        return netns.run_in(self.ns(member), list(argv)).stdout

    def ip_json(self, member: str, *argv: str) -> Any:
        return json.loads(self.sh(member, "ip", "-j", *argv) or "[]")

    def agent_state(self, member: str) -> Path:
        home = self.lab.member(member).home
        assert home is not None
        return home / "agent"

    def router_netns(self, member: str, vpc_id: str) -> str:
        """/proc/<pid>/ns/net of the VPC's router namespace on a host (from the agent's record)."""
        record = json.loads((self.agent_state(member) / "net" / vpc_id / "network.json").read_text())
        return f"/proc/{record['router']['pid']}/ns/net"

    def kill_agent(self, member: str) -> None:
        """`kill -9` a host's agent: its guests, bridges, routers and rules stay, as after a crash."""
        kill_9(daemon_pid(self.home_of(member), "agent"), f"the agent of {member}")

    def start_agent(self, member: str) -> None:
        """Start a host's agent again, as `labcloud lab up` started it."""
        lab_cli.start_agent(self.lab, self.lab.member(member))

    def home_of(self, member: str) -> Path:
        home = self.lab.member(member).home
        assert home is not None
        return home

    def entered(self) -> AbstractContextManager[None]:
        return netns.entered(self.ns("ctl"))

    def _client(self, client_class: Any) -> Any:
        creds = self.credentials
        return namespaced_client(
            client_class,
            endpoint=creds["endpoint"],
            ak=creds["ak"],
            sk=creds["sk"],
            project_id=creds["project_id"],
            ns=self.ns("ctl"),
        )

    def close(self) -> list[str]:
        """`labcloud lab down`, then independent checks; returns what leaked (empty when clean)."""
        problems: list[str] = []
        done = self.cli("down", timeout=900.0)
        if done.returncode != 0:
            problems.append(f"`labcloud lab down` failed ({done.returncode}): {done.stderr.strip()}")
        elif "warning:" in done.stderr:
            problems.append(f"`labcloud lab down` had to clean up: {done.stderr.strip()}")
        if self.plan is not None:
            for ns in self.plan.namespaces:
                if netns.exists(ns):
                    problems.append(f"namespace {ns} still exists")
                    netns.delete(ns)
        gone_ns = (
            self.plan.controller.ns if self.plan else "lcl-none"
        )  # deleted by now: only the marker counts
        leftovers = leftover_processes(gone_ns, self.root)
        if leftovers:
            problems.append("leaked processes: " + "; ".join(f"{p} {c}" for p, c in leftovers.items()))
            netns.kill_all(list(leftovers))
        if self.root.exists():
            problems.append(f"{self.root} still exists")
        if self.root_before:
            after = root_namespace_state()
            for key, before in self.root_before.items():
                if after[key] != before:
                    added = sorted(set(after[key]) - set(before))
                    if any(_is_lab_thing(item) for item in added):
                        problems.append(f"root namespace {key} changed: {added}")
        shutil.rmtree(self.root, ignore_errors=True)
        return problems


def _is_lab_thing(item: str) -> bool:
    """Only what a lab could have made counts (other engineers' work may change the root namespace too)."""
    needles = ("10.254.0.", "fabric", "ul0", "p-ctl", "p-ext", "p-h", "lcb", "lcx", "lcr", "lch")
    return any(needle in item for needle in needles)


def start_lab(hosts: int = 2, azs: int = 2, extra_env: dict[str, str] | None = None) -> Lab:
    root = Path(tempfile.mkdtemp(prefix="lct-lab-", dir="/tmp"))
    root.rmdir()  # `lab up` makes it (and refuses nothing): a fresh path, unique on this machine
    lab = Lab(root=root, hosts=hosts, azs=azs, extra_env=dict(extra_env or {}))
    try:
        lab.up()
    except BaseException:
        lab.close()
        raise
    return lab


@contextmanager
def running_lab(hosts: int = 2, azs: int = 2, extra_env: dict[str, str] | None = None) -> Iterator[Lab]:
    """Fixture body: a lab for the block, then fail loudly if taking it down found leaks."""
    lab = start_lab(hosts, azs, extra_env)
    try:
        yield lab
    finally:
        problems = lab.close()
        if problems:
            raise AssertionError("the lab leaked:\n" + "\n".join(problems))
