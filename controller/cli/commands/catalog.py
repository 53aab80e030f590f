"""`labcloud image list` and `labcloud flavor list`, and choosing an image and a flavor for a new server.

The other image verbs (import, upload, create, ...) live in images.py.
"""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli.client import ApiClient
from controller.cli.commands import flavors as flavor_commands
from controller.cli.commands import images as image_commands
from controller.cli.context import CliContext
from controller.cli.errors import CliError
from controller.cli.output import show_table


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    image = sub.add_parser("image", help="images (IMS)")
    image_verbs = image.add_subparsers(dest="verb", required=True, metavar="VERB")
    image_verbs.add_parser("list", help="list images").set_defaults(func=list_images)
    image_commands.register_verbs(image_verbs)
    flavor = sub.add_parser("flavor", help="flavors")
    flavor_verbs = flavor.add_subparsers(dest="verb", required=True, metavar="VERB")
    flavor_verbs.add_parser("list", help="list flavors").set_defaults(func=list_flavors)
    flavor_commands.register_verbs(flavor_verbs)


def images(client: ApiClient) -> list[dict[str, Any]]:
    return list(client.get("/v2/cloudimages").get("images") or [])


def flavors(client: ApiClient) -> list[dict[str, Any]]:
    return list(client.get(f"/v1/{client.project_id}/cloudservers/flavors").get("flavors") or [])


def list_images(args: argparse.Namespace, ctx: CliContext) -> int:
    rows = [
        [
            i.get("id"),
            i.get("name"),
            i.get("status"),
            i.get("visibility"),
            i.get("__os_type"),
            i.get("min_disk"),
            i.get("min_ram"),
            i.get("size"),
        ]
        for i in images(ctx.client())
    ]
    show_table(["ID", "NAME", "STATUS", "VISIBILITY", "OS", "MIN_DISK", "MIN_RAM", "SIZE"], rows)
    return 0


def list_flavors(args: argparse.Namespace, ctx: CliContext) -> int:
    rows = [
        [f.get("id"), f.get("name"), f.get("vcpus"), f.get("ram"), f.get("disk")]
        for f in sorted(flavors(ctx.client()), key=_flavor_size)
    ]
    show_table(["ID", "NAME", "VCPUS", "RAM_MIB", "DISK_GIB"], rows)
    return 0


def choose_image(client: ApiClient, ref: str | None) -> dict[str, Any]:
    """The image with this id or name; without one, the first public active image."""
    found = images(client)
    if ref is not None:
        by_id = [i for i in found if i.get("id") == ref]
        matches = by_id or [i for i in found if i.get("name") == ref]
        if len(matches) > 1:
            raise CliError("image", f"{len(matches)} images are named {ref!r}; give the id")
        if not matches:
            raise CliError("image", f"no image with id or name {ref!r} (see `labcloud image list`)")
        return matches[0]
    public = [i for i in found if i.get("visibility") == "public" and i.get("status", "active") == "active"]
    if not public:
        raise CliError("image", "there is no public image; give --image")
    return public[0]


def choose_flavor(client: ApiClient, ref: str | None, image: dict[str, Any]) -> dict[str, Any]:
    """The flavor with this id or name; without one, the smallest that fits the image."""
    found = [f for f in flavors(client) if not f.get("OS-FLV-DISABLED:disabled")]
    if ref is not None:
        matches = [f for f in found if f.get("id") == ref] or [f for f in found if f.get("name") == ref]
        if not matches:
            raise CliError("flavor", f"no flavor with id or name {ref!r} (see `labcloud flavor list`)")
        return matches[0]
    min_ram = _int(image.get("min_ram"))
    min_disk = _int(image.get("min_disk"))
    fitting = [
        f for f in found if _int(f.get("ram")) >= min_ram and _disk_fits(_int(f.get("disk")), min_disk)
    ]
    if not fitting:
        raise CliError("flavor", f"no flavor has at least {min_ram} MiB of RAM for image {image.get('name')}")
    return min(fitting, key=_flavor_size)


def _disk_fits(disk_gib: int, min_disk_gib: int) -> bool:
    return disk_gib == 0 or disk_gib >= min_disk_gib  # 0: the root disk takes its size from the image


def _flavor_size(flavor: dict[str, Any]) -> tuple[int, int, int, str]:
    return _int(flavor.get("ram")), _int(flavor.get("vcpus")), _int(flavor.get("disk")), str(flavor.get("id"))


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
