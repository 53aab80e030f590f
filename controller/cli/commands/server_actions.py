"""`labcloud server start|stop|reboot|delete`: batch actions that answer with a job."""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli.client import job_failure
from controller.cli.commands import lookup
from controller.cli.context import CliContext
from controller.cli.output import say


def register(verbs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for verb, text in (
        ("start", "power on"),
        ("stop", "power off (ACPI; --hard pulls the plug)"),
        ("reboot", "reboot (--hard resets)"),
        ("delete", "delete, with the root disk"),
    ):
        parser = verbs.add_parser(verb, help=text)
        parser.add_argument("server", metavar="NAME|ID")
        if verb in ("stop", "reboot"):
            parser.add_argument("--hard", action="store_true")
        parser.add_argument("--wait", action="store_true", help="wait for the job to finish")
        parser.set_defaults(func=run_action, action=verb)


def action_request(action: str, server_id: str, hard: bool) -> tuple[str, dict[str, Any]]:
    """(path suffix, body) of the Huawei batch call for one server."""
    servers = [{"id": server_id}]
    kind = "HARD" if hard else "SOFT"
    if action == "start":
        return "action", {"os-start": {"servers": servers}}
    if action == "stop":
        return "action", {"os-stop": {"servers": servers, "type": kind}}
    if action == "reboot":
        return "action", {"reboot": {"servers": servers, "type": kind}}
    if action == "delete":
        return "delete", {"servers": servers, "delete_publicip": False, "delete_volume": True}
    raise ValueError(f"unknown server action {action!r}")


def run_action(args: argparse.Namespace, ctx: CliContext) -> int:
    client = ctx.client()
    server = lookup.find_server(client, args.server)
    suffix, body = action_request(args.action, server["id"], getattr(args, "hard", False))
    answer = client.post(f"/v1/{client.project_id}/cloudservers/{suffix}", body)
    job_id = answer["job_id"]
    say(f"{args.action} {server.get('name')} ({server['id']}): job {job_id}")
    if args.wait:
        job = client.wait_job(job_id)
        if job.get("status") != "SUCCESS":
            raise job_failure(job)
        if args.action != "delete":
            say(f"{server.get('name')} is {lookup.show_server(client, server['id']).get('status')}")
        else:
            say(f"{server.get('name')} deleted")
    return 0
