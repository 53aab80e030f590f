"""Finding servers by name or id, and reading their addresses."""

from __future__ import annotations

import re
from typing import Any

from controller.cli.client import ApiCallError, ApiClient
from controller.cli.errors import CliError

PAGE = 100
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


def list_servers(client: ApiClient) -> list[dict[str, Any]]:
    """Every server of the project (`offset` is a page number from 1, as in Huawei's API)."""
    servers: list[dict[str, Any]] = []
    for page in range(1, 10_000):
        doc = client.get(
            f"/v1/{client.project_id}/cloudservers/detail", [("offset", str(page)), ("limit", str(PAGE))]
        )
        batch = doc.get("servers") or []
        servers.extend(batch)
        total = doc.get("count")
        if len(batch) < PAGE or (isinstance(total, int) and len(servers) >= total):
            break
    return servers


def show_server(client: ApiClient, server_id: str) -> dict[str, Any]:
    return dict(client.get(f"/v1/{client.project_id}/cloudservers/{server_id}")["server"])


def find_server(client: ApiClient, ref: str) -> dict[str, Any]:
    """The server whose id or (exact, unique) name is `ref`."""
    if _UUID.match(ref):
        try:
            return show_server(client, ref)
        except ApiCallError as exc:
            if exc.status != 404:
                raise
    matches = [s for s in list_servers(client) if s.get("name") == ref or s.get("id") == ref]
    if not matches:
        raise CliError("Ecs.0114", f"no server with id or name {ref!r}")
    if len(matches) > 1:
        raise CliError("ambiguous", f"{len(matches)} servers are named {ref!r}; use the id")
    return matches[0]


def fixed_ips(server: dict[str, Any]) -> list[str]:
    """The server's fixed IPv4 addresses, in the order the API lists them."""
    found = []
    for entries in (server.get("addresses") or {}).values():
        for entry in entries or []:
            if entry.get("OS-EXT-IPS:type", "fixed") == "fixed" and str(entry.get("version", "4")) == "4":
                found.append(entry["addr"])
    return found


def server_row(server: dict[str, Any]) -> list[Any]:
    flavor = server.get("flavor") or {}
    return [
        server.get("id"),
        server.get("name"),
        server.get("status"),
        ",".join(fixed_ips(server)) or "-",
        flavor.get("name") or flavor.get("id"),
        server.get("key_name") or "-",
        server.get("OS-EXT-AZ:availability_zone"),
        server.get("OS-EXT-SRV-ATTR:host") or "-",
    ]


SERVER_HEADERS = ["ID", "NAME", "STATUS", "IP", "FLAVOR", "KEY", "AZ", "HOST"]
