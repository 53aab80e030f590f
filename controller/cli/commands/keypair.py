"""`labcloud keypair create|list|delete`: Nova-style key pairs (`/v2.1/{project}/os-keypairs`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from urllib.parse import quote

from controller.cli.context import CliContext
from controller.cli.errors import CliError
from controller.cli.output import say, show_table


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("keypair", help="SSH key pairs")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = verbs.add_parser("create", help="create a key pair (server-generated unless --public-key)")
    create.add_argument("name")
    create.add_argument(
        "--public-key", type=Path, metavar="FILE", help="import this OpenSSH public key instead"
    )
    create.set_defaults(func=create_keypair)
    verbs.add_parser("list", help="list key pairs").set_defaults(func=list_keypairs)
    delete = verbs.add_parser("delete", help="delete a key pair (and its saved private key)")
    delete.add_argument("name")
    delete.set_defaults(func=delete_keypair)


def _path(ctx: CliContext, name: str | None = None) -> str:
    base = f"/v2.1/{ctx.client().project_id}/os-keypairs"
    return base if name is None else f"{base}/{quote(name, safe='')}"


def create_keypair(args: argparse.Namespace, ctx: CliContext) -> int:
    body: dict[str, str] = {"name": args.name}
    if args.public_key is not None:
        try:
            body["public_key"] = args.public_key.read_text().strip()
        except OSError as exc:
            raise CliError("keypair", f"cannot read {args.public_key}: {exc.strerror}") from None
    keypair = ctx.client().post(_path(ctx), {"keypair": body})["keypair"]
    kind = keypair.get("type") or "ssh"
    say(f"key pair {keypair['name']} ({kind}), fingerprint {keypair.get('fingerprint')}")
    private = keypair.get("private_key")
    if private:
        path = ctx.home.key_file(keypair["name"])
        write_private_key(path, private)
        say(f"private key saved to {path}")
    return 0


def write_private_key(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    os.replace(tmp, path)


def list_keypairs(args: argparse.Namespace, ctx: CliContext) -> int:
    items = ctx.client().get(_path(ctx)).get("keypairs") or []
    rows = []
    for item in items:
        kp = item.get("keypair", item)
        saved = ctx.home.key_file(kp["name"]).exists()
        rows.append([kp["name"], kp.get("type"), kp.get("fingerprint"), "yes" if saved else "no"])
    show_table(["NAME", "TYPE", "FINGERPRINT", "PRIVATE KEY SAVED"], rows)
    return 0


def delete_keypair(args: argparse.Namespace, ctx: CliContext) -> int:
    ctx.client().delete(_path(ctx, args.name))
    ctx.home.key_file(args.name).unlink(missing_ok=True)
    say(f"key pair {args.name} deleted")
    return 0
