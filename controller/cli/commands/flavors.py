"""`labcloud flavor create|delete`: flavors through the admin API (admin credentials); `list` is in catalog.py."""

from __future__ import annotations

import argparse
from urllib.parse import quote

from controller.cli.context import CliContext
from controller.cli.output import say


def register_verbs(verbs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `create` and `delete` under `labcloud flavor`."""
    create = verbs.add_parser("create", help="a new flavor (admin); prints its id")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--vcpus", type=int, required=True, metavar="N")
    create.add_argument("--ram", type=int, required=True, metavar="MIB")
    create.add_argument(
        "--disk", type=int, default=0, metavar="GIB", help="root disk size (default 0: the image's minimum)"
    )
    create.add_argument("--id", metavar="ID", help="the flavor id (default: the name)")
    create.set_defaults(func=create_flavor)
    delete = verbs.add_parser("delete", help="delete a flavor no server uses (admin)")
    delete.add_argument("flavor_id", metavar="ID")
    delete.set_defaults(func=delete_flavor)


def create_flavor(args: argparse.Namespace, ctx: CliContext) -> int:
    fields = {"name": args.name, "vcpus": args.vcpus, "ram": args.ram, "disk": args.disk, "id": args.id}
    body = {"flavor": {k: v for k, v in fields.items() if v is not None}}
    flavor = ctx.client().post("/v1/admin/flavors", body)["flavor"]
    say(flavor["id"])
    return 0


def delete_flavor(args: argparse.Namespace, ctx: CliContext) -> int:
    ctx.client().delete(f"/v1/admin/flavors/{quote(args.flavor_id, safe='')}")
    say(f"flavor {args.flavor_id} deleted")
    return 0
