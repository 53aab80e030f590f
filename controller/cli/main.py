"""`labcloud`: run an all-in-one cloud (`up`, `down`, `status`) and use its API from the shell."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from controller.cli import lab
from controller.cli.commands import catalog, eip, host, keypair, projects, quota, server, ssh
from controller.cli.context import CliContext
from controller.cli.errors import CliError
from controller.cli.home import Home
from controller.cli.output import warn
from controller.cli.stack import Stack
from controller.cli.status import status
from controller.cli.up import DEFAULT_TIMEOUT_S, down, up


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labcloud", description=__doc__)
    parser.add_argument(
        "--home", type=Path, help="state directory (default: $LABCLOUD_HOME or /var/lib/labcloud)"
    )
    parser.add_argument(
        "--credentials", type=Path, metavar="FILE", help="API credentials (default: <home>/credentials.json)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the CLI does")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p_up = sub.add_parser("up", help="start libvirtd, the controller and an agent on this machine")
    p_up.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait per step")
    p_up.set_defaults(func=_cmd_up)
    p_down = sub.add_parser("down", help="stop what `up` started (guests are powered off)")
    p_down.add_argument("--purge", action="store_true", help="also remove guest networking and the home")
    p_down.set_defaults(func=_cmd_down)
    sub.add_parser("status", help="what runs, the accelerator and the hosts").set_defaults(func=_cmd_status)

    keypair.register(sub)
    server.register(sub)
    catalog.register(sub)
    ssh.register(sub)
    eip.register(sub)
    host.register(sub)
    quota.register(sub)
    projects.register(sub)
    lab.register(sub)
    return parser


def _cmd_up(args: argparse.Namespace, ctx: CliContext) -> int:
    up(Stack.from_env(ctx.home), timeout=args.timeout)
    return 0


def _cmd_down(args: argparse.Namespace, ctx: CliContext) -> int:
    down(Stack.from_env(ctx.home), purge=args.purge)
    return 0


def _cmd_status(args: argparse.Namespace, ctx: CliContext) -> int:
    return status(Stack.from_env(ctx.home))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.home is not None:
        # Daemons started by `up` inherit the variable, and so find the same home.
        os.environ["LABCLOUD_HOME"] = str(args.home.absolute())
    home = Home.from_env()
    ctx = CliContext(home=home, credentials_file=args.credentials or home.credentials)
    try:
        return int(args.func(args, ctx) or 0)
    except CliError as exc:
        warn(str(exc))
        if exc.detail:
            warn(exc.detail)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
