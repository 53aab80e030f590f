"""`labcloud quota show|set`: project quotas through the admin API (admin credentials)."""

from __future__ import annotations

import argparse
from urllib.parse import quote

from controller.cli.context import CliContext
from controller.cli.output import show_table

RESOURCES = ("instances", "cores", "ram", "security_groups", "key_pairs", "volumes", "gigabytes", "eips")
UNITS = {"ram": " (MiB)", "gigabytes": " (GiB)"}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("quota", help="project quotas (admin)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    show = verbs.add_parser("show", help="a project's quotas and usage")
    show.add_argument("--project", metavar="ID", help="default: the project of the credentials")
    show.set_defaults(func=show_quota)
    set_ = verbs.add_parser("set", help="change a project's quotas (-1: unlimited, 'default': the default)")
    set_.add_argument("--project", metavar="ID", help="default: the project of the credentials")
    for resource in RESOURCES:
        unit = UNITS.get(resource, "")
        set_.add_argument(
            f"--{resource.replace('_', '-')}",
            dest=resource,
            type=_limit,
            default=argparse.SUPPRESS,  # absent unless given, so 'default' (None) differs from "not given"
            metavar="N",
            help=f"limit{unit}",
        )
    set_.set_defaults(func=set_quota)


def _path(ctx: CliContext, project: str | None) -> str:
    return f"/v1/admin/projects/{quote(project or ctx.client().project_id, safe='')}/quotas"


def _limit(value: str) -> int | None:
    if value == "default":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'default': {value!r}") from None


def _show(doc: dict[str, dict[str, int]]) -> None:
    quota, usage = doc["quota"], doc["usage"]
    rows = [[r, "unlimited" if quota[r] == -1 else quota[r], usage[r]] for r in RESOURCES]
    show_table(["RESOURCE", "LIMIT", "USED"], rows)


def show_quota(args: argparse.Namespace, ctx: CliContext) -> int:
    _show(ctx.client().get(_path(ctx, args.project)))
    return 0


def set_quota(args: argparse.Namespace, ctx: CliContext) -> int:
    changes = {r: getattr(args, r) for r in RESOURCES if hasattr(args, r)}
    _show(ctx.client().put(_path(ctx, args.project), {"quota": changes}))
    return 0
