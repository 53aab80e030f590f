"""`labcloud host list|disable|enable|forget`: hypervisor hosts through the admin API (admin credentials)."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from controller.cli.client import ApiClient
from controller.cli.commands import join_tokens
from controller.cli.context import CliContext
from controller.cli.errors import CliError
from controller.cli.output import say, show_table

HEADERS = ["ID", "HOSTNAME", "AZ", "STATE", "STATUS", "VCPUS", "RAM MIB", "ACCEL", "REASON"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("host", help="hypervisor hosts (admin)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("list", help="list hosts: up/down and enabled/disabled").set_defaults(func=list_hosts)
    disable = verbs.add_parser("disable", help="place no new servers on a host")
    disable.add_argument("host", metavar="ID|HOSTNAME")
    disable.add_argument("--reason", help="why (shown in host list)")
    disable.set_defaults(func=disable_host)
    enable = verbs.add_parser("enable", help="place new servers on a host again")
    enable.add_argument("host", metavar="ID|HOSTNAME")
    enable.set_defaults(func=enable_host)
    forget = verbs.add_parser(
        "forget", help="let a reinstalled host's new agent register it (drops the old agent's API token)"
    )
    forget.add_argument("host", metavar="ID|HOSTNAME")
    forget.set_defaults(func=forget_host)
    join_tokens.register(verbs)


def host_row(host: dict[str, Any]) -> list[Any]:
    return [
        host.get("id"),
        host.get("hostname"),
        host.get("availability_zone"),
        host.get("state"),
        "enabled" if host.get("enabled") else "disabled",
        host.get("vcpus"),
        host.get("memory_mib"),
        host.get("accelerator"),
        host.get("disabled_reason") or "",
    ]


def _hosts(client: ApiClient) -> list[dict[str, Any]]:
    return list(client.get("/v1/admin/hosts").get("hosts") or [])


def find_host(client: ApiClient, ref: str) -> dict[str, Any]:
    """A host by id, or by hostname when that names exactly one."""
    hosts = _hosts(client)
    by_id = [h for h in hosts if h.get("id") == ref]
    matches = by_id or [h for h in hosts if h.get("hostname") == ref]
    if not matches:
        raise CliError("host", f"no host {ref!r}: see `labcloud host list`")
    if len(matches) > 1:
        raise CliError("host", f"{len(matches)} hosts are called {ref!r}: give the id")
    return matches[0]


def list_hosts(args: argparse.Namespace, ctx: CliContext) -> int:
    show_table(HEADERS, [host_row(h) for h in _hosts(ctx.client())])
    return 0


def disable_host(args: argparse.Namespace, ctx: CliContext) -> int:
    client = ctx.client()
    host = find_host(client, args.host)
    body = {"reason": args.reason} if args.reason else {}
    done = client.post(f"/v1/admin/hosts/{quote(host['id'], safe='')}/disable", body)["host"]
    say(f"host {done['id']} ({done['hostname']}) disabled: no new servers will be placed on it")
    return 0


def enable_host(args: argparse.Namespace, ctx: CliContext) -> int:
    client = ctx.client()
    host = find_host(client, args.host)
    done = client.post(f"/v1/admin/hosts/{quote(host['id'], safe='')}/enable")["host"]
    say(f"host {done['id']} ({done['hostname']}) enabled")
    return 0


def forget_host(args: argparse.Namespace, ctx: CliContext) -> int:
    client = ctx.client()
    host = find_host(client, args.host)
    done = client.post(f"/v1/admin/hosts/{quote(host['id'], safe='')}/forget")["host"]
    say(f"host {done['id']} ({done['hostname']}) forgotten: down until an agent registers it again")
    return 0
