"""`labcloud lab up|down|status|exec`: a multi-host cloud on one machine, every host in a namespace of its own.

`up` builds the fabric (`lab_plan` draws it), then starts the controller in its namespace, listening on the
underlay, and in every host namespace a private libvirtd (as `labcloud up` does: own mount namespace and socket)
and an agent with its own home, host id, zone and underlay address. The fabric doubles as the external network:
the external namespace (its gateway) stands for the LAN / internet, every host's agent gets an address on it
(through a macvlan of its ul0) and the controller hands out EIPs from `EXTERNAL_POOL`.
Nothing is created in the root namespace. `down` purges every member with `labcloud down --purge` run inside its
namespace (guests, routers, dnsmasq), kills whatever is left that belongs to the lab, deletes the namespaces and
the directory, and reports what it had to clean up.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from controller.bootstrap import write_private
from controller.cli import daemon, netns
from controller.cli.client import ApiCallError, ApiClient, Credentials
from controller.cli.context import CliContext
from controller.cli.errors import CliError
from controller.cli.home import Home, image_cache_dir
from controller.cli.image import ensure_image, seed_image_from_env
from controller.cli.lab_plan import (
    AGENT_PORT,
    CONTROLLER_PORT,
    EXTERNAL_ADDR,
    EXTERNAL_POOL,
    FABRIC_BRIDGE,
    MEMBER_DEV,
    UNDERLAY,
    UNDERLAY_MTU,
    LabPlan,
    Member,
    plan,
)
from controller.cli.libvirtd import PrivateLibvirtd
from controller.cli.output import say, table, warn

log = logging.getLogger(__name__)

DEFAULT_DIR = Path("/var/lib/labcloud-lab")
STATE_FILE = "lab.json"
DEFAULT_TIMEOUT_S = 300.0
NOT_RUNNING_EXIT = 3
_KEPT_VARS = ("LABCLOUD_IMAGE_CACHE",)  # a lab shares nothing else with the caller's own cloud
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_POLL_S = 0.25


class NamespacedLibvirtd(PrivateLibvirtd):
    """A host's private libvirtd, started inside that host's network namespace."""

    def __init__(self, ns: str, home: Home) -> None:
        super().__init__(home.libvirt, home.pid_file("libvirtd"), home.log_file("libvirtd"), home.root)
        self.ns = ns

    def launch_argv(self) -> list[str]:
        return netns.exec_argv(self.ns, super().launch_argv())


def lab_dir(arg: Path | None) -> Path:
    return (arg or Path(os.environ.get("LABCLOUD_LAB_DIR") or DEFAULT_DIR)).absolute()


def load(root: Path) -> LabPlan | None:
    """The lab recorded in `root`, or None if there is none."""
    try:
        doc = json.loads((root / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise CliError("lab", f"{root / STATE_FILE} is unreadable: {exc}") from None
    return plan(doc["id"], root, doc["hosts"], doc["azs"])


# --- up ---


def up(root: Path, *, hosts: int, azs: int, timeout: float = DEFAULT_TIMEOUT_S) -> LabPlan:
    existing = load(root)
    if existing is not None:
        if _problems(existing):
            raise CliError("lab", f"a lab that is not healthy exists in {root}; `labcloud lab down` it first")
        say(f"the lab in {root} is already up.")
        return existing
    try:
        lab = plan(secrets.token_hex(2), root, hosts, azs)
    except ValueError as exc:
        raise CliError("lab", str(exc)) from None
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # qemu (libvirt-qemu) must reach the disks below the hosts' homes
    image = seed_image_from_env() or ensure_image(image_cache_dir(), root / "image-build.log")
    # Recorded before anything is made, so `down` finds a half-built lab.
    (root / STATE_FILE).write_text(json.dumps({"id": lab.lab_id, "hosts": hosts, "azs": azs}) + "\n")
    try:
        build_fabric(lab)
        start_controller(lab, image, timeout)
        for member in lab.hosts:
            start_host(lab, member)
        _wait(f"{len(lab.hosts)} hosts to register", timeout, lambda: _all_registered(lab), lab)
    except BaseException:
        warn("labcloud lab up failed; removing what it made")
        for problem in down(root):
            warn(f"  {problem}")
        raise
    say(f"lab {lab.lab_id} is up in {root}: {len(lab.hosts)} hosts, API {lab.controller_url}")
    return lab


def build_fabric(lab: LabPlan) -> None:
    """The namespaces, the fabric bridge and one veth per member, all created directly where they belong."""
    for ns in lab.namespaces:
        netns.create(ns)
    fab = lab.fabric_ns
    netns.ip("-n", fab, "link", "add", FABRIC_BRIDGE, "mtu", str(UNDERLAY_MTU), "type", "bridge")
    netns.ip("-n", fab, "link", "set", FABRIC_BRIDGE, "up")
    for member in lab.members:
        port = member.fabric_port
        netns.ip("-n", fab, "link", "add", port, "mtu", str(UNDERLAY_MTU), "type", "veth",
                 "peer", "name", MEMBER_DEV, "netns", member.ns, "mtu", str(UNDERLAY_MTU))  # fmt: skip
        netns.ip("-n", fab, "link", "set", port, "master", FABRIC_BRIDGE, "up")
        netns.ip("-n", member.ns, "addr", "add", f"{member.address}/{UNDERLAY.prefixlen}", "dev", MEMBER_DEV)
        netns.ip("-n", member.ns, "link", "set", MEMBER_DEV, "up")
    log.info("lab %s: fabric with %d members", lab.lab_id, len(lab.members))


def daemon_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABCLOUD_") or k in _KEPT_VARS}
    env["LABCLOUD_HOME"] = str(home)
    path = env.get("PATH", "/usr/bin:/bin").split(":")
    env["PATH"] = ":".join(path + [d for d in _SBIN if d not in path])
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost," + str(UNDERLAY)
    return env


def start_controller(lab: LabPlan, image: Path, timeout: float) -> None:
    member = lab.controller
    assert member.home is not None
    home = Home(member.home)
    home.ensure()
    env = daemon_env(home.root)
    env.update(
        LABCLOUD_LISTEN_HOST=member.address,
        LABCLOUD_LISTEN_PORT=str(CONTROLLER_PORT),
        LABCLOUD_SEED_IMAGE=str(image),
        LABCLOUD_EXTERNAL_CIDR=str(UNDERLAY),
        LABCLOUD_EXTERNAL_POOL=EXTERNAL_POOL,
        LABCLOUD_EXTERNAL_GATEWAY=EXTERNAL_ADDR,
    )
    daemon.spawn(
        netns.exec_argv(member.ns, [sys.executable, "-P", "-m", "controller"]),
        env=env,
        cwd=home.root,
        log_file=home.log_file("controller"),
        pid_file=home.pid_file("controller"),
    )
    _wait(
        "the controller to answer",
        timeout,
        lambda: _controller_healthy(lab),
        lab,
        home.log_file("controller"),
    )


def start_host(lab: LabPlan, member: Member) -> None:
    assert member.home is not None
    home = Home(member.home)
    home.ensure()
    NamespacedLibvirtd(member.ns, home).start(daemon_env(home.root))
    start_agent(lab, member)


def start_agent(lab: LabPlan, member: Member) -> None:
    """A host's agent, in its namespace; also to start it again after it stopped or was killed (its stored
    specs and the controller bring the host back to what it should be). `-P`, as `labcloud up` does: the
    working directory is the host's home, whose `agent/` state directory would otherwise shadow the package."""
    assert member.home is not None and lab.controller.home is not None
    home = Home(member.home)
    env = daemon_env(home.root)
    env.update(
        LABCLOUD_AGENT_CONTROLLER_URL=lab.controller_url,
        LABCLOUD_AGENT_JOIN_TOKEN=host_join_token(lab, member),
        LABCLOUD_AGENT_LIBVIRT_URI=NamespacedLibvirtd(member.ns, home).uri,
        LABCLOUD_AGENT_STATE_DIR=str(home.agent_state),
        LABCLOUD_AGENT_LISTEN_HOST=member.address,
        LABCLOUD_AGENT_LISTEN_PORT=str(AGENT_PORT),
        LABCLOUD_AGENT_HOST_ID=member.name,
        LABCLOUD_AGENT_AVAILABILITY_ZONE=member.zone or "",
        LABCLOUD_AGENT_UNDERLAY_IP=member.address,
        LABCLOUD_AGENT_EXTERNAL_DEV=MEMBER_DEV,
        LABCLOUD_AGENT_EXTERNAL_IP=f"{member.external_ip}/{UNDERLAY.prefixlen}",
        LABCLOUD_AGENT_EXTERNAL_GATEWAY=EXTERNAL_ADDR,
    )
    daemon.spawn(
        netns.exec_argv(member.ns, [sys.executable, "-P", "-m", "agent"]),
        env=env,
        cwd=home.root,
        log_file=home.log_file("agent"),
        pid_file=home.pid_file("agent"),
    )


def host_join_token(lab: LabPlan, member: Member) -> str:
    """The host's own join token (`<its home>/join-token`, 0600), issued for its host id on its first start:
    no lab host holds a token that could register another, and a restarted agent joins with the same one."""
    assert member.home is not None and lab.controller.home is not None
    path = Home(member.home).join_token
    if path.exists():
        return path.read_text().strip()
    creds = Credentials.load(Home(lab.controller.home).credentials)
    body = {"join_token": {"host_id": member.name, "description": f"lab {lab.lab_id} {member.name}"}}
    with netns.entered(lab.controller.ns), ApiClient(creds, timeout=30.0) as client:
        token = str(client.post("/v1/admin/join-tokens", body)["join_token"]["token"])
    write_private(path, token + "\n")
    return token


def _controller_healthy(lab: LabPlan) -> bool:
    with netns.entered(lab.controller.ns):
        try:
            response = httpx.get(lab.controller_url + "/healthz", timeout=5.0, trust_env=False)
        except httpx.HTTPError:
            return False
    return response.status_code == 200


def hosts(lab: LabPlan) -> list[dict[str, Any]]:
    """The admin view of the lab's hosts, asked from inside the controller's namespace."""
    assert lab.controller.home is not None
    creds = Credentials.load(Home(lab.controller.home).credentials)
    with netns.entered(lab.controller.ns), ApiClient(creds, timeout=10.0) as client:
        return list(client.get("/v1/admin/hosts").get("hosts") or [])


def _all_registered(lab: LabPlan) -> bool:
    try:
        seen = {h.get("id"): h.get("state") for h in hosts(lab)}
    except (ApiCallError, CliError) as exc:
        log.debug("hosts not available yet: %s", exc)
        return False
    return all(seen.get(m.name) == "up" for m in lab.hosts)


def _wait(
    what: str, timeout: float, ready: Callable[[], bool], lab: LabPlan, log_file: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [name for name, pid in _daemon_pids(lab).items() if pid is None]
        if dead:
            member, _, name = dead[0].partition("/")
            home = lab.member(member).home
            detail = daemon.tail(Home(home).log_file(name)) if home else None
            raise CliError("lab", f"waiting for {what}: {', '.join(dead)} not running", detail=detail)
        if time.monotonic() >= deadline:
            detail = daemon.tail(log_file) if log_file else None
            raise CliError("lab", f"{what} did not happen within {timeout:.0f} s", detail=detail)
        time.sleep(_POLL_S)


def _daemon_pids(lab: LabPlan) -> dict[str, int | None]:
    """Every daemon the lab should run (member/daemon -> pid, None when not running), of members started."""
    found: dict[str, int | None] = {}
    for member in (lab.controller, *lab.hosts):
        assert member.home is not None
        home = Home(member.home)
        names = ["controller"] if member is lab.controller else ["libvirtd", "agent"]
        for name in names:
            if home.pid_file(name).exists() or member is lab.controller:
                found[f"{member.name}/{name}"] = daemon.running_pid(home.pid_file(name), home.root)
    return found


# --- down ---


def down(root: Path) -> list[str]:
    """Remove the lab in `root`; returns what had leaked past the orderly shutdown (empty when clean)."""
    lab = load(root)
    problems: list[str] = []
    if lab is not None:
        for member in (*lab.hosts, lab.controller):
            problems += _purge_member(member)
    leftovers = _lab_processes(root)
    if leftovers:
        problems.append("killed leftover processes: " + "; ".join(f"{p} {c}" for p, c in leftovers.items()))
        for pid in leftovers:
            daemon.terminate(pid, timeout=5.0)
    if lab is not None:
        for ns in reversed(lab.namespaces):
            try:
                killed = netns.delete(ns)
            except CliError as exc:
                problems.append(exc.message)
                continue
            if killed:
                problems.append(f"killed {len(killed)} processes left in {ns}")
    if root.exists():
        shutil.rmtree(root, ignore_errors=True)
    return problems


def _purge_member(member: Member) -> list[str]:
    """`labcloud down --purge` for one member's home, inside its namespace (where its bridges and rules are)."""
    if member.home is None or not member.home.exists():
        return []
    if not netns.exists(member.ns):
        # No namespace, no network state: stop the daemons by pid file and forget the home.
        home = Home(member.home)
        for name in ("agent", "controller"):
            daemon.stop(home.pid_file(name), home.root, timeout=10.0)
        NamespacedLibvirtd(member.ns, home).stop(timeout=10.0)
        return []
    argv = [sys.executable, "-m", "controller.cli.main", "--home", str(member.home), "down", "--purge"]
    done = subprocess.run(
        netns.exec_argv(member.ns, argv),
        env=daemon_env(member.home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        return [f"{member.name}: `labcloud down --purge` failed ({done.returncode}): {done.stderr.strip()}"]
    return []


def _lab_processes(root: Path) -> dict[int, str]:
    """Processes that belong to the lab: daemons and their children carry a home below `root` in their
    environment (router holders their state dir), and guests (qemu, whose environment libvirt clears) name
    their disks below `root`. The caller and its ancestors (e.g. a shell whose command line names the
    directory) never count."""
    marker = str(root).encode()
    spared = _ancestors(os.getpid())
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in spared:
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        in_env = any(marker in var for var in environ if var.startswith(b"LABCLOUD_"))
        guest = bool(argv) and b"qemu-system" in argv[0] and any(marker in arg for arg in argv)
        if (in_env or guest) and daemon.is_alive(int(entry)):
            found[int(entry)] = b" ".join(argv).decode(errors="replace").strip()
    return found


def _ancestors(pid: int) -> set[int]:
    seen = {pid}
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            break
        seen.add(pid)
    return seen


# --- status and exec ---


def _problems(lab: LabPlan) -> list[str]:
    problems = [f"namespace {ns} is missing" for ns in lab.namespaces if not netns.exists(ns)]
    problems += [f"{name} is not running" for name, pid in _daemon_pids(lab).items() if pid is None]
    return problems


def status(root: Path) -> int:
    lab = load(root)
    if lab is None:
        say(f"no lab in {root}")
        return NOT_RUNNING_EXIT
    pids = _daemon_pids(lab)
    say(
        f"lab {lab.lab_id} in {root}: {len(lab.hosts)} hosts; API {lab.controller_url} (inside {lab.controller.ns})"
    )
    rows = []
    for member in lab.members:
        daemons = ", ".join(
            f"{key.split('/')[1]} {pid or 'stopped'}"
            for key, pid in pids.items()
            if key.startswith(f"{member.name}/")
        )
        state = "ok" if netns.exists(member.ns) else "missing"
        rows.append([member.name, member.ns, state, member.address, member.zone or "", daemons or "-"])
    say(table(["MEMBER", "NAMESPACE", "NETNS", "UNDERLAY", "AZ", "DAEMONS"], rows))
    problems = _problems(lab)
    if not problems:
        try:
            registered = hosts(lab)
        except CliError as exc:
            problems.append(f"the controller does not answer: {exc.message}")
        else:
            say("hosts (as the controller sees them):")
            say(table(
                ["ID", "AZ", "STATE", "UNDERLAY", "URL"],
                [[h.get("id"), h.get("availability_zone"), h.get("state"), h.get("underlay_ip") or "", h.get("url")]
                 for h in registered],
            ))  # fmt: skip
            problems += [
                f"host {h.get('id')} is {h.get('state')}" for h in registered if h.get("state") != "up"
            ]
    for problem in problems:
        say(f"problem: {problem}")
    say(f"use it: labcloud lab exec -- labcloud server list   (runs in {lab.controller.ns})")
    return NOT_RUNNING_EXIT if problems else 0


def exec_in(root: Path, where: str, argv: list[str]) -> int:
    """Replace this process with `argv` inside a member's namespace, with that member's LABCLOUD_HOME."""
    lab = load(root)
    if lab is None:
        raise CliError("lab", f"no lab in {root}: `labcloud lab up` first")
    try:
        member = lab.member(where)
    except KeyError:
        names = ", ".join(m.name for m in lab.members)
        raise CliError("lab", f"no lab member {where!r}; the members are {names}") from None
    if not argv:
        argv = [os.environ.get("SHELL", "/bin/sh")]
    env = daemon_env(member.home or lab.root)
    os.execvpe("ip", netns.exec_argv(member.ns, argv), env)
    return 0  # not reached


# --- the command line ---


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("lab", help="several hosts on this machine, each in a network namespace")
    parser.add_argument("--dir", type=Path, help=f"lab state (default: $LABCLOUD_LAB_DIR or {DEFAULT_DIR})")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    p_up = verbs.add_parser("up", help="build the fabric and start a controller and N hosts")
    p_up.add_argument("--hosts", type=int, default=2, help="hypervisor hosts (default 2)")
    p_up.add_argument("--azs", type=int, default=1, help="availability zones, hosts spread round-robin")
    p_up.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait per step")
    p_up.set_defaults(func=_cmd_up)
    verbs.add_parser("down", help="stop everything and remove the lab").set_defaults(func=_cmd_down)
    verbs.add_parser("status", help="namespaces, daemons and hosts; exit 3 if not healthy").set_defaults(
        func=_cmd_status
    )
    p_exec = verbs.add_parser(
        "exec", help="run a command in a member's namespace (default: the controller's)"
    )
    p_exec.add_argument("--on", default="ctl", metavar="MEMBER", help="ctl, ext, h1, h2, …")
    p_exec.add_argument("argv", nargs=argparse.REMAINDER, help="the command (after --)")
    p_exec.set_defaults(func=_cmd_exec)


def _cmd_up(args: argparse.Namespace, ctx: CliContext) -> int:
    root = lab_dir(args.dir)
    up(root, hosts=args.hosts, azs=args.azs, timeout=args.timeout)
    return status(root)


def _cmd_down(args: argparse.Namespace, ctx: CliContext) -> int:
    root = lab_dir(args.dir)
    problems = down(root)
    for problem in problems:
        warn(f"warning: {problem}")
    say(f"lab in {root} removed.")
    return 0


def _cmd_status(args: argparse.Namespace, ctx: CliContext) -> int:
    return status(lab_dir(args.dir))


def _cmd_exec(args: argparse.Namespace, ctx: CliContext) -> int:
    argv = list(args.argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    return exec_in(lab_dir(args.dir), args.on, argv)
