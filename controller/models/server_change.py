"""Request bodies of the in-place server changes: resize (modify specifications), reinstall and change OS.

Strict like the other ECS bodies; unknown keys (`cpu_options`, `isAutoPay`, encryption metadata…) are ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField

WITH_STOP_SERVER = "withStopServer"


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class ResizeOptionIn(_Body):
    flavor_ref: str = PydanticField(alias="flavorRef", min_length=1)
    mode: Literal["withStopServer"] | None = None
    dedicated_host_id: str | None = None
    extendparam: dict[str, Any] | None = None


class ResizeServerIn(_Body):
    resize: ResizeOptionIn
    dry_run: bool = False


class OsMetadataIn(_Body):
    user_data: str | None = None  # base64 (the v2 cloud-init paths only)


class ReinstallOptionIn(_Body):
    adminpass: str | None = PydanticField(default=None, min_length=1)
    keyname: str | None = PydanticField(default=None, min_length=1)
    userid: str | None = None
    mode: Literal["withStopServer"] | None = None
    metadata: OsMetadataIn | None = None


class ReinstallServerIn(_Body):
    os_reinstall: ReinstallOptionIn = PydanticField(alias="os-reinstall")


class ChangeOsOptionIn(ReinstallOptionIn):
    imageid: str = PydanticField(min_length=1)


class ChangeOsServerIn(_Body):
    os_change: ChangeOsOptionIn = PydanticField(alias="os-change")
