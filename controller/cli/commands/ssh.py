"""`labcloud ssh NAME [-- command…]`: log in as root with the private key saved for the server's key pair."""

from __future__ import annotations

import argparse
import os
import shutil
from typing import Any

from controller.cli import guest_route
from controller.cli.commands import lookup
from controller.cli.context import CliContext
from controller.cli.errors import CliError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("ssh", help="SSH to a server as root")
    parser.add_argument("server", metavar="NAME|ID")
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, help="after --: a command to run instead of a shell"
    )
    parser.set_defaults(func=ssh)


def ssh_argv(key_file: str, ip: str, command: list[str]) -> list[str]:
    # Host keys change with every new server, so none are remembered.
    return [
        "ssh",
        "-i",
        key_file,
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=10",
        f"root@{ip}",
        *command,
    ]


def ssh(args: argparse.Namespace, ctx: CliContext) -> int:
    server = lookup.find_server(ctx.client(), args.server)
    ips = lookup.fixed_ips(server)
    if not ips:
        raise CliError(
            "ssh", f"server {server.get('name')} has no IP address yet (status {server.get('status')})"
        )
    key_name = server.get("key_name")
    if not key_name:
        raise CliError("ssh", f"server {server.get('name')} was created without a key pair")
    key_file = ctx.home.key_file(key_name)
    if not key_file.exists():
        raise CliError("ssh", f"no private key for key pair {key_name} at {key_file}")
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if shutil.which("ssh") is None:
        raise CliError("missing-tool", "ssh is not installed (apt-get install openssh-client)")
    argv = ssh_argv(str(key_file), ips[0], command)
    netns = guest_route.router_netns_for(ctx.home.agent_state, _vpc_of(server, ips[0]), ips[0])
    if netns is not None:  # another VPC with the same CIDR owns the host's route: go through the guest's own
        argv = ["nsenter", f"--net={netns}", *argv]
    ctx.close()
    os.execvp(argv[0], argv)
    return 0  # not reached


def _vpc_of(server: dict[str, Any], ip: str) -> str:
    """The VPC of the server's address `ip` (the API lists addresses by VPC id)."""
    for vpc_id, entries in (server.get("addresses") or {}).items():
        if any(entry.get("addr") == ip for entry in entries or []):
            return str(vpc_id)
    return str((server.get("metadata") or {}).get("vpc_id", ""))
