"""`labcloud server create|list|show|console`; power actions and delete are in server_actions."""

from __future__ import annotations

import argparse
import base64
import secrets
import string
from pathlib import Path
from typing import Any

from controller.cli.client import ApiClient, job_failure
from controller.cli.commands import catalog, lookup, network, server_actions
from controller.cli.context import CliContext
from controller.cli.errors import CliError
from controller.cli.output import say, show_json, show_table


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("server", help="servers (ECS)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = verbs.add_parser("create", help="create servers")
    create.add_argument("--name", required=True)
    create.add_argument("--image", metavar="ID|NAME", help="default: the first public image")
    create.add_argument(
        "--flavor", metavar="ID|NAME", help="default: the smallest flavor that fits the image"
    )
    create.add_argument("--key", metavar="NAME", help="key pair for root's authorized_keys")
    create.add_argument("--vpc", metavar="ID", help="with --subnet; default: the labcloud-default VPC")
    create.add_argument("--subnet", metavar="ID")
    create.add_argument(
        "--security-group",
        metavar="ID",
        action="append",
        help="repeatable; default: labcloud-ssh with the default network",
    )
    create.add_argument("--count", type=int, default=1)
    create.add_argument("--user-data", type=Path, metavar="FILE")
    create.add_argument(
        "--admin-pass",
        nargs="?",
        const="",
        default=None,
        metavar="PASS",
        help="set root's password (a generated one is printed when PASS is left out)",
    )
    create.add_argument(
        "--az",
        "--availability-zone",
        dest="availability_zone",
        metavar="ZONE",
        help="the zone to place it in",
    )
    create.add_argument("--wait", action="store_true", help="wait until the servers are ACTIVE (or failed)")
    create.set_defaults(func=create_servers)
    verbs.add_parser("list", help="list servers").set_defaults(func=list_servers)
    show = verbs.add_parser("show", help="show one server as JSON")
    show.add_argument("server", metavar="NAME|ID")
    show.set_defaults(func=show_server)
    console = verbs.add_parser("console", help="print the server's serial console log")
    console.add_argument("server", metavar="NAME|ID")
    console.add_argument("--length", type=int, metavar="LINES", help="only the last LINES lines")
    console.set_defaults(func=console_output)
    server_actions.register(verbs)


def create_servers(args: argparse.Namespace, ctx: CliContext) -> int:
    client = ctx.client()
    if (args.vpc is None) != (args.subnet is None):
        raise CliError("usage", "give both --vpc and --subnet, or neither")
    if args.count < 1:
        raise CliError("usage", "--count must be at least 1")
    image = catalog.choose_image(client, args.image)
    flavor = catalog.choose_flavor(client, args.flavor, image)
    if args.vpc is None:
        placement = network.default_network(client)
        vpc_id, subnet_id = placement.vpc_id, placement.subnet_id
        groups = args.security_group or ([placement.security_group_id] if placement.security_group_id else [])
    else:
        vpc_id, subnet_id, groups = args.vpc, args.subnet, args.security_group or []
    server: dict[str, Any] = {
        "name": args.name,
        "imageRef": image["id"],
        "flavorRef": flavor["id"],
        "vpcid": vpc_id,
        "nics": [{"subnet_id": subnet_id}],
        "root_volume": {"volumetype": "SATA"},
        "count": args.count,
    }
    if groups:
        server["security_groups"] = [{"id": g} for g in groups]
    if args.key:
        server["key_name"] = args.key
    if args.availability_zone:
        server["availability_zone"] = args.availability_zone
    if args.user_data is not None:
        try:
            server["user_data"] = base64.b64encode(args.user_data.read_bytes()).decode()
        except OSError as exc:
            raise CliError("usage", f"cannot read {args.user_data}: {exc.strerror}") from None
    if args.admin_pass is not None:
        server["adminPass"] = args.admin_pass or generate_password()
        if not args.admin_pass:
            say(f"root password: {server['adminPass']}")
    answer = client.post(f"/v1/{client.project_id}/cloudservers", {"server": server})
    ids = list(answer.get("serverIds") or [])
    say(
        f"creating {args.count} server(s) from {image.get('name')} with flavor {flavor.get('id')}: "
        f"job {answer.get('job_id')}"
    )
    if not args.wait:
        for sid in ids:
            say(f"  {sid}")
        return 0
    job = client.wait_job(answer["job_id"])
    ids = ids or _job_server_ids(job)
    servers = [lookup.show_server(client, sid) for sid in ids]
    if servers:
        show_table(lookup.SERVER_HEADERS, [lookup.server_row(s) for s in servers])
    if job.get("status") != "SUCCESS":
        raise job_failure(job)
    return 0


def _job_server_ids(job: dict[str, Any]) -> list[str]:
    entities = job.get("entities") or {}
    ids = [sub.get("entities", {}).get("server_id") for sub in entities.get("sub_jobs") or []]
    if entities.get("server_id"):
        ids.append(entities["server_id"])
    return [i for i in dict.fromkeys(ids) if i]


def generate_password(length: int = 16) -> str:
    """Huawei's rules: 8 to 26 characters with upper and lower case, digits and a special character."""
    specials = "!@%-_=+[]:./?"
    pools = (string.ascii_uppercase, string.ascii_lowercase, string.digits, specials)
    chars = [secrets.choice(pool) for pool in pools]
    alphabet = "".join(pools)
    chars += [secrets.choice(alphabet) for _ in range(length - len(chars))]
    secrets.SystemRandom().shuffle(chars)
    return "".join(chars)


def list_servers(args: argparse.Namespace, ctx: CliContext) -> int:
    servers = lookup.list_servers(ctx.client())
    show_table(lookup.SERVER_HEADERS, [lookup.server_row(s) for s in servers])
    return 0


def show_server(args: argparse.Namespace, ctx: CliContext) -> int:
    show_json(lookup.find_server(ctx.client(), args.server))
    return 0


def console_output(args: argparse.Namespace, ctx: CliContext) -> int:
    client: ApiClient = ctx.client()
    server = lookup.find_server(client, args.server)
    query = [] if args.length is None else [("length", str(args.length))]
    doc = client.get(f"/v1/{client.project_id}/cloudservers/{server['id']}/console-output", query)
    output = doc.get("output") or ""
    say(output.rstrip("\n"))
    return 0
