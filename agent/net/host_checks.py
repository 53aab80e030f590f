"""Kernel prerequisites of security groups, checked when the agent starts.

Bridged guest traffic reaches iptables only through br_netfilter with `bridge-nf-call-iptables=1` (and
ip6tables likewise); without them every security group is silently bypassed. `problems` is a pure function of
the values read, so every verdict and message is unit-tested without touching /proc; `ensure_bridge_filtering`
reads them, makes the fixes it is allowed to (modprobe, writing the sysctl), reads again and raises a
NetworkError naming the fix for whatever is still wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.errors import NetworkError
from agent.net import proc

log = logging.getLogger(__name__)

PROC_SYS = Path("/proc/sys")
BRIDGE_SYSCTLS = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")
FORWARDING_SYSCTL = "net.ipv4.ip_forward"

Values = Mapping[str, str | None]  # sysctl name -> its value, None when the file does not exist


def required(*, forwarding: bool = False) -> dict[str, str]:
    """The sysctls labcloud needs at 1 in the agent's namespace (forwarding only where it routes traffic)."""
    wanted = dict.fromkeys(BRIDGE_SYSCTLS, "1")
    if forwarding:
        wanted[FORWARDING_SYSCTL] = "1"
    return wanted


def problems(values: Values, *, forwarding: bool = False) -> list[str]:
    """What is wrong, one sentence per sysctl, each naming its fix; [] when all is well (pure)."""
    found = []
    for name, want in required(forwarding=forwarding).items():
        value = values.get(name)
        if value is None and name.startswith("net.bridge."):
            found.append(
                f"{name} does not exist: the br_netfilter module is not loaded, so bridged guest traffic "
                "would bypass every security group; fix: `modprobe br_netfilter` (and list it in "
                "/etc/modules-load.d/ to survive reboots)"
            )
        elif value is None:
            found.append(f"{name} does not exist in this kernel; labcloud needs it at {want}")
        elif value.strip() != want:
            found.append(
                f"{name} is {value.strip()}, labcloud needs {want}; fix: `sysctl -w {name}={want}` "
                "(and put it in /etc/sysctl.d/ to survive reboots)"
            )
    return found


def read_sysctls(names: list[str], root: Path = PROC_SYS) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for name in names:
        try:
            values[name] = (root / name.replace(".", "/")).read_text().strip()
        except OSError:
            values[name] = None
    return values


def ensure_bridge_filtering(
    *,
    forwarding: bool = False,
    read: Callable[[list[str]], Values] = read_sysctls,
    modprobe: Callable[[], None] | None = None,
    write: Callable[[str, str], None] | None = None,
) -> None:
    """Read, fix what can be fixed, re-read; NetworkError with every remaining problem and its fix."""
    wanted = required(forwarding=forwarding)
    values = read(list(wanted))
    if not problems(values, forwarding=forwarding):
        return
    if any(values.get(name) is None for name in BRIDGE_SYSCTLS):
        try:
            (modprobe or _modprobe_br_netfilter)()
        except NetworkError as exc:
            log.warning("modprobe br_netfilter failed: %s", exc.message)
        values = read(list(wanted))
    for name, want in wanted.items():
        value = values.get(name)
        if value is not None and value.strip() != want:
            try:
                (write or _write_sysctl)(name, want)
                log.info("set %s to %s", name, want)
            except OSError as exc:
                log.warning("cannot set %s to %s: %s", name, want, exc)
    left = problems(read(list(wanted)), forwarding=forwarding)
    if left:
        raise NetworkError("host networking is not ready: " + "; ".join(left))


def _modprobe_br_netfilter() -> None:
    proc.run(["modprobe", "br_netfilter"])


def _write_sysctl(name: str, value: str) -> None:
    (PROC_SYS / name.replace(".", "/")).write_text(value + "\n")
