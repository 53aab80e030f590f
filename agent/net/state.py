"""The agent's record of the VPC networks on this host: one directory per VPC under `<state_dir>/net/`.

`network.json` holds the last ensured spec and the router holder (pid + netns inode); dnsmasq keeps its
config, hosts, pid, lease and log files beside it. The kernel is the truth for links and rules; this record is
what lets a restarted agent find its router namespaces and dnsmasq processes again.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from agent.errors import NetworkError
from agent.net.dhcp import DhcpFiles
from agent.net.files import write_atomically
from agent.net.router import Router
from agent.schemas import NetworkSpec

log = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
RECORD = "network.json"


@dataclass(frozen=True)
class NetworkRecord:
    spec: NetworkSpec
    router: Router | None


class NetworkStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def directory(self, vpc_id: str) -> Path:
        if not _SAFE_ID.match(vpc_id):
            raise NetworkError(f"VPC id {vpc_id!r} is not usable as a directory name")
        return self.root / vpc_id

    def dhcp_files(self, vpc_id: str) -> DhcpFiles:
        return DhcpFiles(self.directory(vpc_id))

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(entry.name for entry in self.root.iterdir() if (entry / RECORD).is_file())

    def load(self, vpc_id: str) -> NetworkRecord | None:
        path = self.directory(vpc_id) / RECORD
        try:
            data = json.loads(path.read_text())
            router = data.get("router")
            return NetworkRecord(
                spec=NetworkSpec.model_validate(data["spec"]),
                router=Router(pid=router["pid"], netns_inode=router["netns_inode"]) if router else None,
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.warning(
                "vpc %s: unreadable state file %s (%s); treating the network as new", vpc_id, path, exc
            )
            return None

    def save(self, record: NetworkRecord) -> None:
        directory = self.directory(record.spec.vpc_id)
        directory.mkdir(parents=True, exist_ok=True)
        router = record.router
        data = {
            "spec": record.spec.model_dump(mode="json"),
            "router": {"pid": router.pid, "netns_inode": router.netns_inode} if router else None,
        }
        write_atomically(directory / RECORD, json.dumps(data, indent=2, sort_keys=True) + "\n", mode=0o600)

    def remove(self, vpc_id: str) -> None:
        shutil.rmtree(self.directory(vpc_id), ignore_errors=True)

    def remove_all(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
