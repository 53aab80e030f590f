"""`labcloud eip create|list|show|bind|unbind|delete`: elastic IPs (EIP v1 `/v1/{project}/publicips`).

An EIP is named by its id or its address; a server by its id or name, and it is bound through the server's first
port (as `os-interface` lists it), the one the guest's eth0 is on.
"""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli.client import ApiCallError, ApiClient
from controller.cli.commands.lookup import find_server
from controller.cli.context import CliContext
from controller.cli.errors import CliError
from controller.cli.output import say, show_json, show_table

HEADERS = ["ID", "ADDRESS", "STATUS", "FIXED IP", "PORT", "ALIAS", "BANDWIDTH"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("eip", help="elastic IPs")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = verbs.add_parser("create", help="allocate an EIP from the external pool")
    create.add_argument(
        "--address", metavar="IP", help="this address of the pool (default: the next free one)"
    )
    create.add_argument("--alias", metavar="NAME")
    create.add_argument("--bandwidth", type=int, default=5, metavar="MBIT", help="recorded, not enforced")
    create.add_argument("--server", metavar="NAME|ID", help="bind it to this server at once")
    create.set_defaults(func=create_eip)
    verbs.add_parser("list", help="the project's EIPs").set_defaults(func=list_eips)
    for verb, func, text in (
        ("show", show_eip, "one EIP as JSON"),
        ("unbind", unbind_eip, "detach an EIP from its server"),
        ("delete", delete_eip, "release an EIP to the pool"),
    ):
        one = verbs.add_parser(verb, help=text)
        one.add_argument("eip", metavar="ID|ADDRESS")
        one.set_defaults(func=func)
    bind = verbs.add_parser("bind", help="bind an EIP to a server's first port")
    bind.add_argument("eip", metavar="ID|ADDRESS")
    bind.add_argument("server", metavar="NAME|ID")
    bind.set_defaults(func=bind_eip)


def _base(client: ApiClient) -> str:
    return f"/v1/{client.project_id}/publicips"


def find_eip(client: ApiClient, ref: str) -> dict[str, Any]:
    """The project's EIP whose id or address is `ref`."""
    for field in ("id", "public_ip_address"):
        found = client.get(_base(client), [(field, ref)]).get("publicips") or []
        if found:
            return dict(found[0])
    raise CliError("VPC.1301", f"no EIP with id or address {ref!r}")


def server_port(client: ApiClient, server_ref: str) -> tuple[dict[str, Any], str]:
    """(the server, the id of its first port)."""
    server = find_server(client, server_ref)
    nics = client.get(f"/v1/{client.project_id}/cloudservers/{server['id']}/os-interface")
    attachments = nics.get("interfaceAttachments") or []
    if not attachments:
        raise CliError("eip", f"server {server.get('name')} has no port yet (status {server.get('status')})")
    return server, str(attachments[0]["port_id"])


def _update(client: ApiClient, eip: dict[str, Any], port_id: str | None) -> dict[str, Any]:
    doc = client.put(f"{_base(client)}/{eip['id']}", {"publicip": {"port_id": port_id}})
    return dict(doc["publicip"])


def create_eip(args: argparse.Namespace, ctx: CliContext) -> int:
    client = ctx.client()
    port: tuple[dict[str, Any], str] | None = None
    if args.server is not None:  # resolved first: a bad server name must not allocate anything
        port = server_port(client, args.server)
    publicip: dict[str, Any] = {"type": "5_bgp", "ip_version": 4}
    if args.address:
        publicip["ip_address"] = args.address
    if args.alias:
        publicip["alias"] = args.alias
    body = {
        "publicip": publicip,
        "bandwidth": {"share_type": "PER", "name": "labcloud", "size": args.bandwidth},
    }
    eip = dict(client.post(_base(client), body)["publicip"])
    say(f"EIP {eip['public_ip_address']} ({eip['id']}) allocated")
    if port is not None:
        try:
            eip = _update(client, eip, port[1])
        except ApiCallError:
            client.delete(f"{_base(client)}/{eip['id']}")  # allocated for this server only: give it back
            raise
        say(
            f"EIP {eip['public_ip_address']} bound to server {port[0].get('name')} ({eip['private_ip_address']})"
        )
    return 0


def list_eips(args: argparse.Namespace, ctx: CliContext) -> int:
    items = ctx.client().get(_base(ctx.client())).get("publicips") or []
    rows = [
        [
            e.get("id"),
            e.get("public_ip_address"),
            e.get("status"),
            e.get("private_ip_address") or "-",
            e.get("port_id") or "-",
            e.get("alias") or "-",
            e.get("bandwidth_size"),
        ]
        for e in items
    ]
    show_table(HEADERS, rows)
    return 0


def show_eip(args: argparse.Namespace, ctx: CliContext) -> int:
    show_json(find_eip(ctx.client(), args.eip))
    return 0


def bind_eip(args: argparse.Namespace, ctx: CliContext) -> int:
    client = ctx.client()
    eip = find_eip(client, args.eip)
    server, port_id = server_port(client, args.server)
    eip = _update(client, eip, port_id)
    say(f"EIP {eip['public_ip_address']} bound to server {server.get('name')} ({eip['private_ip_address']})")
    return 0


def unbind_eip(args: argparse.Namespace, ctx: CliContext) -> int:
    client = ctx.client()
    eip = _update(client, find_eip(client, args.eip), None)
    say(f"EIP {eip['public_ip_address']} unbound")
    return 0


def delete_eip(args: argparse.Namespace, ctx: CliContext) -> int:
    client = ctx.client()
    eip = find_eip(client, args.eip)
    client.delete(f"{_base(client)}/{eip['id']}")
    say(f"EIP {eip['public_ip_address']} released")
    return 0
