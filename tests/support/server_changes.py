"""Resize, reinstall and change OS through the official ECS SDK, and a flavor with a root disk to resize to.

labcloud has no flavor API (flavors are seeded), so `add_flavor` writes the row the way an operator would, into
the controller's database.
"""

from __future__ import annotations

from typing import Any

from huaweicloudsdkecs.v2 import (
    ChangeServerOsWithCloudInitOption,
    ChangeServerOsWithCloudInitRequest,
    ChangeServerOsWithCloudInitRequestBody,
    ReinstallServerWithCloudInitOption,
    ReinstallServerWithCloudInitRequest,
    ReinstallServerWithCloudInitRequestBody,
    ResizePostPaidServerOption,
    ResizePostPaidServerRequest,
    ResizePostPaidServerRequestBody,
)
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlmodel import Session

from controller.models.flavor import Flavor

WITH_STOP = "withStopServer"


def resize(
    ecs: Any, server_id: str, flavor_id: str, *, mode: str | None = WITH_STOP, dry_run: bool = False
) -> Any:
    body = ResizePostPaidServerRequestBody(
        resize=ResizePostPaidServerOption(flavor_ref=flavor_id, mode=mode), dry_run=dry_run or None
    )
    return ecs.resize_post_paid_server(ResizePostPaidServerRequest(server_id=server_id, body=body))


def reinstall(ecs: Any, server_id: str, *, mode: str | None = WITH_STOP, **option: Any) -> Any:
    body = ReinstallServerWithCloudInitRequestBody(
        os_reinstall=ReinstallServerWithCloudInitOption(mode=mode, **option)
    )
    return ecs.reinstall_server_with_cloud_init(
        ReinstallServerWithCloudInitRequest(server_id=server_id, body=body)
    )


def change_os(ecs: Any, server_id: str, image_id: str, *, mode: str | None = WITH_STOP, **option: Any) -> Any:
    body = ChangeServerOsWithCloudInitRequestBody(
        os_change=ChangeServerOsWithCloudInitOption(imageid=image_id, mode=mode, **option)
    )
    return ecs.change_server_os_with_cloud_init(
        ChangeServerOsWithCloudInitRequest(server_id=server_id, body=body)
    )


def add_flavor(target: Engine | str, flavor_id: str, *, vcpus: int, ram_mib: int, disk_gib: int) -> None:
    """Add a flavor to the database of an engine, or of a database URL (a running cloud's SQLite file)."""
    engine = create_engine(target) if isinstance(target, str) else target
    try:
        with Session(engine) as session:
            session.add(Flavor(id=flavor_id, name=flavor_id, vcpus=vcpus, ram_mib=ram_mib, disk_gib=disk_gib))
            session.commit()
    finally:
        if isinstance(target, str):
            engine.dispose()
