"""`labcloud up` and `labcloud down`: start and stop the all-in-one installation of one home.

`up` is idempotent: each daemon that already runs (and answers) is kept, each missing one is started, and when
nothing was missing it just says so. On a failure it stops what this run started and shows the relevant log.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.cli import daemon, libvirtd
from controller.cli.client import ApiCallError
from controller.cli.errors import CliError
from controller.cli.home import DEFAULT_HOME, image_cache_dir
from controller.cli.image import ensure_image, seed_image_from_env
from controller.cli.output import say, warn
from controller.cli.stack import AGENT, CONTROLLER, LIBVIRTD, Stack

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0
_POLL_S = 0.25
IFF_UP = 0x1


def up(stack: Stack, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    home = stack.home
    home.ensure()
    _ensure_loopback()
    if all(stack.pid(name) is not None for name in stack.daemons()) and stack.controller_healthy():
        host = _registered_host(stack)
        if host is not None:
            say(f"labcloud is already running (home {home.root}).")
            summary(stack, host)
            return
    started: list[str] = []
    try:
        image = seed_image_from_env() or ensure_image(image_cache_dir(), home.log_file("image-build"))
        if stack.external_libvirt_uri is None and stack.pid(LIBVIRTD) is None:
            stack.libvirtd.start(stack.base_env(), timeout=timeout)
            started.append(LIBVIRTD)
        if stack.pid(CONTROLLER) is None:
            _check_port_free(stack.settings.listen_host, stack.settings.listen_port, CONTROLLER)
            daemon.spawn(
                stack.controller_argv(),
                env=stack.controller_env(image),
                cwd=home.root,
                log_file=home.log_file(CONTROLLER),
                pid_file=home.pid_file(CONTROLLER),
            )
            started.append(CONTROLLER)
        _wait(stack, CONTROLLER, timeout, "answer on " + stack.controller_url, stack.controller_healthy)
        if stack.pid(AGENT) is None:
            _check_port_free(*stack.agent_listen(), AGENT)
            token = home.join_token.read_text().strip()
            daemon.spawn(
                stack.agent_argv(),
                env=stack.agent_env(token),
                cwd=home.root,
                log_file=home.log_file(AGENT),
                pid_file=home.pid_file(AGENT),
            )
            started.append(AGENT)
        registered: list[dict[str, Any]] = []
        _wait(stack, AGENT, timeout, "register with the controller", lambda: _found(registered, stack))
    except (CliError, OSError) as exc:
        if started:
            order = list(reversed(started))
            say(f"labcloud up failed; stopping what it started: {', '.join(order)}")
            _stop_daemons(stack, order)
        if isinstance(exc, CliError):
            raise
        raise CliError("up", str(exc)) from exc
    host = registered[0]
    say(f"labcloud is up (home {home.root}).")
    summary(stack, host)


def summary(stack: Stack, host: dict[str, Any]) -> None:
    home = stack.home
    say(f"  API endpoint:  {stack.controller_url}")
    say(f"  credentials:   {home.credentials}")
    say(f"  accelerator:   {host.get('accelerator')}")
    say(f"  logs:          {home.logs}")
    say("Try it:")
    prefix = "" if home.root == DEFAULT_HOME else f"export LABCLOUD_HOME={home.root}; "
    say(f"  {prefix}labcloud keypair create mykey && labcloud server create --name web-1 --key mykey --wait")
    say("  labcloud ssh web-1")


def down(stack: Stack, *, purge: bool = False) -> None:
    """Stop the agent and controller, power off the guests, stop libvirtd; `purge` also forgets everything."""
    home = stack.home
    _stop_daemons(stack, [AGENT, CONTROLLER])
    if stack.external_libvirt_uri is None:
        lv = stack.libvirtd
        if lv.pid() is not None:
            # Guests are children of this libvirtd: power them off first, or they outlive it.
            libvirtd.destroy_domains(lv.uri, libvirtd.running_domains(lv.uri))
        _stop_daemons(stack, [LIBVIRTD])
        _kill_orphan_guests(home.root)
    elif purge:
        _forget_external_guests(stack.external_libvirt_uri, home.root)
    if purge:
        _teardown_network(stack.agent_state_dir)
        _remove_home(home.root)
        say(f"labcloud stopped; {home.root} removed.")
    else:
        say(f"labcloud stopped (home {home.root} kept; `labcloud down --purge` removes it).")


def _registered_host(stack: Stack) -> dict[str, Any] | None:
    try:
        host = stack.local_host(stack.hosts())
    except ApiCallError as exc:
        log.debug("hosts not available yet: %s", exc)
        return None
    return host if host is not None and host.get("state") == "up" else None


def _found(into: list[dict[str, Any]], stack: Stack) -> bool:
    # A restarted agent's host is still registered from before: wait until the agent itself serves, which it
    # does only after its start-up resync has rebuilt the host's networks and domains.
    if not _agent_serving(stack):
        return False
    host = _registered_host(stack)
    if host is not None:
        into.append(host)
    return host is not None


def _agent_serving(stack: Stack) -> bool:
    host, port = stack.agent_listen()
    host = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return True
    except OSError:
        return False


def _check_port_free(host: str, port: int, name: str) -> None:
    """Fail early, and clearly, when something else (another cloud in this namespace?) holds the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise CliError(
                name,
                f"cannot listen on {host}:{port}: {exc.strerror}; is another labcloud running "
                "in this network namespace with another LABCLOUD_HOME?",
            ) from None


def _wait(stack: Stack, name: str, timeout: float, what: str, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    log_file = stack.home.log_file(name)
    while not ready():
        if stack.pid(name) is None:
            raise CliError(
                name,
                f"the {name} exited before it could {what}; log: {log_file}",
                detail=daemon.tail(log_file),
            )
        if time.monotonic() >= deadline:
            raise CliError(
                name,
                f"the {name} did not {what} within {timeout:.0f} s; log: {log_file}",
                detail=daemon.tail(log_file),
            )
        time.sleep(_POLL_S)


def _stop_daemons(stack: Stack, names: list[str]) -> None:
    for name in names:
        pid = (
            stack.libvirtd.stop()
            if name == LIBVIRTD
            else daemon.stop(stack.home.pid_file(name), stack.home.root)
        )
        if pid is not None:
            say(f"  stopped {name} (pid {pid})")


def _ensure_loopback() -> None:
    """Bring lo up: in a fresh network namespace it is down, and every daemon here talks over 127.0.0.1."""
    try:
        flags = int(Path("/sys/class/net/lo/flags").read_text(), 16)
    except (OSError, ValueError):
        flags = 0
    if flags & IFF_UP:
        return
    done = subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CliError("network", f"cannot bring the loopback interface up: {done.stderr.strip()}")


def _forget_external_guests(uri: str, home: Path) -> None:
    """On a libvirtd that is not ours, remove only the guests whose disks live in this home."""
    try:
        ours = [n for n in libvirtd.all_domains(uri) if str(home) in libvirtd.domain_xml(uri, n)]
    except CliError as exc:
        warn(f"warning: cannot remove this home's guests from {uri}: {exc.message}")
        return
    libvirtd.destroy_domains(uri, ours, undefine=True)


def _kill_orphan_guests(home: Path) -> None:
    """qemu processes whose disks live in this home but whose libvirtd is gone (it crashed or was killed)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"qemu-system" in argv[0] and any(str(home).encode() in a for a in argv):
            log.warning("killing orphaned guest qemu pid %s", entry)
            daemon.terminate(int(entry), timeout=5.0)


def _teardown_network(agent_state: Path) -> None:
    try:
        from agent.net.network import HostNetwork
    except ImportError as exc:
        raise CliError("purge", f"the agent's network layer is not importable: {exc}") from exc
    HostNetwork(agent_state).teardown_all()


def _remove_home(root: Path) -> None:
    # Guard against deleting something that is not a labcloud home (a mistyped LABCLOUD_HOME=/ say).
    markers = ("credentials.json", "join-token", "run", "logs")
    if root == Path("/") or len(root.parts) < 2 or not any((root / m).exists() for m in markers):
        raise CliError("purge", f"{root} does not look like a labcloud home; not removing it")
    shutil.rmtree(root)
