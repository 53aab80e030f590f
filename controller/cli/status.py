"""`labcloud status`: which daemons of this home run, the accelerator, and the hypervisor hosts."""

from __future__ import annotations

from controller.cli.errors import CliError
from controller.cli.output import say, table
from controller.cli.stack import CONTROLLER, LIBVIRTD, Stack

NOT_RUNNING_EXIT = 3  # like `systemctl status` for a stopped unit


def status(stack: Stack) -> int:
    """Print the state; returns 0 when every daemon runs and the local host is up, else 3."""
    home = stack.home
    say(f"labcloud home: {home.root}")
    rows = []
    for name in stack.daemons():
        pid = stack.pid(name)
        where = {LIBVIRTD: stack.libvirt_uri, CONTROLLER: stack.controller_url}.get(name, "")
        rows.append([name, pid or "-", "running" if pid else "stopped", where])
    if stack.external_libvirt_uri:
        rows.append(["libvirtd", "-", "external", stack.external_libvirt_uri])
    say(table(["DAEMON", "PID", "STATE", "WHERE"], rows))
    all_running = all(row[2] != "stopped" for row in rows)
    if stack.pid(CONTROLLER) is None:
        say("accelerator: unknown (the controller is not running)")
        return NOT_RUNNING_EXIT
    try:
        hosts = stack.hosts()
    except CliError as exc:
        say(f"hosts: unavailable ({exc})")
        return NOT_RUNNING_EXIT
    local = stack.local_host(hosts)
    say(f"accelerator: {local.get('accelerator') if local else 'unknown (no local host registered)'}")
    say("hosts:")
    say(
        table(
            ["ID", "HOSTNAME", "AZ", "ACCEL", "VCPUS", "MEMORY", "STATE"],
            [
                [
                    h.get("id"),
                    h.get("hostname"),
                    h.get("availability_zone"),
                    h.get("accelerator"),
                    h.get("vcpus"),
                    f"{h.get('memory_mib')} MiB",
                    h.get("state"),
                ]
                for h in hosts
            ],
        )
        if hosts
        else "  (none registered)"
    )
    local_up = local is not None and local.get("state") == "up"
    return 0 if all_running and local_up else NOT_RUNNING_EXIT
