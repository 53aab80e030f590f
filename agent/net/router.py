"""Router namespaces, each held open by a tiny holder process.

Named namespaces (`ip netns add`) do not work for the agent: it runs inside `ip netns exec`'s private mount
namespace, so a bind mount under /run/netns would be invisible to other processes and vanish with the agent.
Instead each router namespace is created by `unshare --net sleep infinity` in its own session. That process
keeps the namespace alive across agent restarts; `/proc/<pid>/ns/net` is the handle to enter it; killing every
process in the namespace (the holder and the dnsmasq inside) frees it.

A pid alone is not proof after a reboot or pid reuse, so a router is identified by (pid, netns inode) and the
holder carries marker variables in its environment (which VPC, which agent state dir); `is_alive` checks all
of them.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass
from subprocess import DEVNULL

from agent.errors import NetworkError
from agent.net import proc

log = logging.getLogger(__name__)

ENV_VPC = "LABCLOUD_ROUTER_VPC"
# The agent's net state dir, so that two agents on one machine never mix up their routers.
ENV_OWNER = "LABCLOUD_ROUTER_OWNER"
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Router:
    pid: int
    netns_inode: int

    @property
    def netns_path(self) -> str:
        return f"/proc/{self.pid}/ns/net"


def is_alive(router: Router, vpc_id: str, owner: str) -> bool:
    """True if the holder still runs, still holds the same namespace and carries our markers."""
    if proc.netns_inode(router.pid) != router.netns_inode:
        return False
    env = proc.environ(router.pid)
    return env.get(ENV_VPC) == vpc_id and env.get(ENV_OWNER) == owner


def start(vpc_id: str, owner: str) -> Router:
    """Start a holder in a fresh network namespace and wait until it is in there.

    `setsid --fork` detaches it at once: it is never the agent's child, so it needs no reaping by the agent
    and outlives it. It is found again by its markers.
    """
    argv = [
        proc.which("setsid"),
        "--fork",
        proc.which("unshare"),
        "--net",
        "--",
        proc.which("sleep"),
        "infinity",
    ]
    try:
        # No pipes: the holder would keep them open forever.
        subprocess.run(
            argv,
            env={ENV_VPC: vpc_id, ENV_OWNER: owner},
            stdin=DEVNULL,
            stdout=DEVNULL,
            stderr=DEVNULL,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise NetworkError(f"cannot start the router namespace of VPC {vpc_id}: {exc}") from exc
    own_inode = proc.netns_inode()
    deadline = time.monotonic() + START_TIMEOUT_S
    # unshare() happens before exec, so wait for both the new namespace and the exec of sleep.
    while time.monotonic() < deadline:
        router = find(owner).get(vpc_id)
        if router is not None and router.netns_inode != own_inode:
            argv0 = proc.cmdline(router.pid)[:1]
            if argv0 and os.path.basename(argv0[0]) == "sleep":
                log.info("vpc %s: router namespace %s held by pid %s", vpc_id, router.netns_inode, router.pid)
                return router
        time.sleep(0.005)
    raise NetworkError(f"router namespace of VPC {vpc_id} did not come up within {START_TIMEOUT_S:.0f} s")


def find(owner: str) -> dict[str, Router]:
    """Every live holder started for `owner`, by VPC id: recovers routers whose state file is lost."""
    found: dict[str, Router] = {}
    for pid in proc.all_pids():
        env = proc.environ(pid)
        vpc_id = env.get(ENV_VPC)
        inode = proc.netns_inode(pid)
        if vpc_id and env.get(ENV_OWNER) == owner and inode is not None and proc.is_running(pid):
            found[vpc_id] = Router(pid=pid, netns_inode=inode)
    return found


def stop(router: Router, vpc_id: str, owner: str) -> None:
    """Stop every process in the router namespace (the holder, dnsmasq): the namespace and its veths go away.

    Only done while the holder is verified: a dead namespace's inode may already belong to someone else's.
    """
    if not is_alive(router, vpc_id, owner):
        return
    pids = proc.pids_in_netns(router.netns_inode)
    log.info("vpc %s: stopping router namespace %s (pids %s)", vpc_id, router.netns_inode, pids)
    proc.terminate(pids)
