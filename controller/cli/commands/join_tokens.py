"""`labcloud host token create|list|revoke`: per-host join tokens through the admin API (admin credentials)."""

from __future__ import annotations

import argparse
from urllib.parse import quote

from controller.cli.context import CliContext
from controller.cli.output import say, show_table


def register(verbs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `token` under `labcloud host`."""
    parser = verbs.add_parser("token", help="per-host join tokens for agents")
    tokens = parser.add_subparsers(dest="token_verb", required=True, metavar="VERB")
    create = tokens.add_parser("create", help="issue a token one agent joins with (shown only now)")
    create.add_argument("--host-id", metavar="H", help="bind it to this host id (default: the first to join)")
    create.add_argument(
        "--expires", type=int, metavar="S", help="refuse it if unused after S seconds (default: never)"
    )
    create.add_argument("--description")
    create.set_defaults(func=create_token)
    tokens.add_parser("list", help="tokens, their hosts and states").set_defaults(func=list_tokens)
    revoke = tokens.add_parser("revoke", help="revoke a token: its agent is refused and its host is down")
    revoke.add_argument("token_id", metavar="ID")
    revoke.set_defaults(func=revoke_token)


def create_token(args: argparse.Namespace, ctx: CliContext) -> int:
    fields = {"host_id": args.host_id, "expires_in": args.expires, "description": args.description}
    body = {"join_token": {k: v for k, v in fields.items() if v is not None}}
    token = ctx.client().post("/v1/admin/join-tokens", body)["join_token"]
    say(token["token"])
    where = f"host {token['host_id']}" if token["host_id"] else "the first host that joins with it"
    expiry = f", unless unused by {token['expires_at']}" if token["expires_at"] else ""
    say(f"join token {token['id']} for {where}{expiry}: give it to the agent as LABCLOUD_AGENT_JOIN_TOKEN")
    return 0


def list_tokens(args: argparse.Namespace, ctx: CliContext) -> int:
    rows = [
        [t["id"], t["host_id"] or "-", t["status"], t["created_at"], t["expires_at"] or "-", t["description"]]
        for t in ctx.client().get("/v1/admin/join-tokens")["join_tokens"]
    ]
    show_table(["ID", "HOST", "STATUS", "CREATED", "EXPIRES", "DESCRIPTION"], rows)
    return 0


def revoke_token(args: argparse.Namespace, ctx: CliContext) -> int:
    ctx.client().delete(f"/v1/admin/join-tokens/{quote(args.token_id, safe='')}")
    say(f"join token {args.token_id} revoked")
    return 0
