"""`labcloud project create|list|show|delete` and `labcloud credential create|list|revoke`: tenants and their
AK/SK credentials through the admin API (admin credentials)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from controller.bootstrap import write_private
from controller.cli.context import CliContext
from controller.cli.output import say, show_json, show_table


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("project", help="projects (tenants) (admin)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = verbs.add_parser("create", help="a new project with the default quotas and security group")
    create.add_argument("name")
    create.add_argument("--description")
    create.set_defaults(func=create_project)
    verbs.add_parser("list", help="every project").set_defaults(func=list_projects)
    show = verbs.add_parser("show", help="a project, what it owns, its quotas and usage (JSON)")
    show.add_argument("project", metavar="ID|NAME")
    show.set_defaults(func=show_project)
    delete = verbs.add_parser("delete", help="delete a project that owns nothing any more")
    delete.add_argument("project", metavar="ID|NAME")
    delete.set_defaults(func=delete_project)

    parser = sub.add_parser("credential", help="AK/SK credentials of projects (admin)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    issue = verbs.add_parser("create", help="issue an AK/SK for a project (the secret is shown only now)")
    issue.add_argument("--project", required=True, metavar="ID|NAME")
    issue.add_argument("--description")
    issue.add_argument(
        "--output", type=Path, metavar="FILE", help="write a credentials.json (0600) instead of printing"
    )
    issue.set_defaults(func=create_credential)
    listing = verbs.add_parser("list", help="access keys (never their secrets)")
    listing.add_argument("--project", metavar="ID|NAME", help="only this project's")
    listing.set_defaults(func=list_credentials)
    revoke = verbs.add_parser("revoke", help="revoke an access key: refused from now on")
    revoke.add_argument("access_key", metavar="AK")
    revoke.set_defaults(func=revoke_credential)


def _project_path(ref: str) -> str:
    return f"/v1/admin/projects/{quote(ref, safe='')}"


def create_project(args: argparse.Namespace, ctx: CliContext) -> int:
    body: dict[str, Any] = {"name": args.name}
    if args.description is not None:
        body["description"] = args.description
    project = ctx.client().post("/v1/admin/projects", {"project": body})["project"]
    say(f"project {project['id']} ({project['name']}) created")
    return 0


def list_projects(args: argparse.Namespace, ctx: CliContext) -> int:
    rows = [
        [p["id"], p["name"], p["created_at"], p["description"]]
        for p in ctx.client().get("/v1/admin/projects")["projects"]
    ]
    show_table(["ID", "NAME", "CREATED", "DESCRIPTION"], rows)
    return 0


def show_project(args: argparse.Namespace, ctx: CliContext) -> int:
    show_json(ctx.client().get(_project_path(args.project))["project"])
    return 0


def delete_project(args: argparse.Namespace, ctx: CliContext) -> int:
    client = ctx.client()
    project = client.get(_project_path(args.project))["project"]
    client.delete(_project_path(project["id"]))
    say(f"project {project['id']} ({project['name']}) deleted")
    return 0


def create_credential(args: argparse.Namespace, ctx: CliContext) -> int:
    client = ctx.client()
    project = client.get(_project_path(args.project))["project"]
    body = {"credential": {"description": args.description}} if args.description else None
    cred = client.post(_project_path(project["id"]) + "/credentials", body)["credential"]
    doc = {
        "endpoint": client.creds.endpoint,
        "region": client.creds.region,
        "ak": cred["access"],
        "sk": cred["secret"],
        "project_id": cred["project_id"],
    }
    if args.output is not None:
        write_private(args.output, json.dumps(doc, indent=2) + "\n")
        say(f"credential {cred['access']} for project {project['name']} written to {args.output}")
    else:
        show_json(doc)
    return 0


def list_credentials(args: argparse.Namespace, ctx: CliContext) -> int:
    client = ctx.client()
    query = []
    if args.project:
        query.append(("project_id", client.get(_project_path(args.project))["project"]["id"]))
    creds = client.get("/v1/admin/credentials", query)["credentials"]
    rows = [
        [
            c["access"],
            c["project_id"],
            c["status"],
            "yes" if c["is_admin"] else "",
            c["create_time"],
            c["description"],
        ]
        for c in creds
    ]
    show_table(["ACCESS KEY", "PROJECT", "STATUS", "ADMIN", "CREATED", "DESCRIPTION"], rows)
    return 0


def revoke_credential(args: argparse.Namespace, ctx: CliContext) -> int:
    ctx.client().delete(f"/v1/admin/credentials/{quote(args.access_key, safe='')}")
    say(f"credential {args.access_key} revoked")
    return 0
