"""Controller settings, from `LABCLOUD_…` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import PositiveFloat
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path("/var/lib/labcloud")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LABCLOUD_", extra="ignore")

    home: Path = DEFAULT_HOME
    database_url: str | None = None  # default: SQLite file under home
    listen_host: str = "127.0.0.1"
    listen_port: int = 8778
    public_url: str | None = None  # the endpoint written into credentials.json
    region: str = "lab-1"
    default_availability_zone: str = "lab-1a"
    seed_image: Path | None = None  # a qcow2 (with its .json manifest beside it) registered as a public image
    signature_skew_seconds: int = 900
    job_workers: int = 8  # jobs mostly wait on agents: 8 lets a batch of servers build side by side
    job_lease_seconds: float = 30.0
    job_max_attempts: int = 3
    host_dead_seconds: float = 45.0
    # Overcommit: a host offers its vCPUs, RAM and disk times these to the scheduler.
    cpu_allocation_ratio: PositiveFloat = 4.0
    ram_allocation_ratio: PositiveFloat = 1.0
    disk_allocation_ratio: PositiveFloat = 1.0
    # Reconciler: how often it compares the database with the agents (0 turns the loop off), how long a server
    # may sit in a task or BUILD with no job working on it before it becomes ERROR, and what to do with
    # domains that no server owns.
    reconcile_seconds: float = 15.0
    task_timeout_seconds: float = 600.0
    reconcile_orphans: Literal["report", "delete"] = "report"
    # A heartbeat's power report only moves servers unchanged for this long (see services/power_sync).
    power_settle_seconds: float = 15.0
    max_servers_per_request: int = 20
    # Quota defaults for every project (an admin can override them per project; -1 is unlimited).
    quota_instances: int = 20
    quota_cores: int = 40
    quota_ram_mib: int = 51200
    quota_security_groups: int = 100
    quota_key_pairs: int = 100
    quota_volumes: int = 50  # EVS volumes
    quota_gigabytes: int = 5000  # EVS GiB over all volumes
    quota_eips: int = 10  # EIP v1 publicips
    # The external network EIPs come from: its CIDR, the pool in it ("first-last" or a CIDR; default: the
    # whole CIDR but the network, broadcast and gateway addresses) and its gateway. Unset: no EIPs.
    external_cidr: str | None = None
    external_pool: str | None = None
    external_gateway: str | None = None
    client_token_hours: float = 8.0  # how long a create's X-Client-Token replays the same answer
    # Requests per second per access key (token bucket; 0 turns limiting off) and the burst a bucket holds.
    # Generous: a limit against runaway scripts, far above what tests and the console send.
    rate_limit_per_second: float = 500.0
    rate_limit_burst: int = 1000
    backup_dir: Path | None = None  # the directory backup store; default `<home>/backups`

    @property
    def controller_dir(self) -> Path:
        return self.home / "controller"

    @property
    def backup_store_dir(self) -> Path:
        """Where CBR backups are kept (the directory backup store)."""
        return self.backup_dir or self.home / "backups"

    @property
    def image_dir(self) -> Path:
        return self.controller_dir / "images"

    @property
    def credentials_file(self) -> Path:
        return self.home / "credentials.json"

    @property
    def join_token_file(self) -> Path:
        return self.home / "join-token"

    @property
    def endpoint(self) -> str:
        return self.public_url or f"http://{self.listen_host}:{self.listen_port}"

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.controller_dir / 'labcloud.db'}"
