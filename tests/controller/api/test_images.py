"""IMS image listing through the official IMS SDK, and the agents' image download route, on a real controller
started with a seed image (a real qcow2 made by qemu-img, with its JSON manifest)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from huaweicloudsdkims.v2 import ListImagesRequest

from controller.db import session_scope
from controller.models.image import ACTIVE, Image
from controller.services import transfer_grants
from tests.controller.api.helpers import expect_error


def make_seed(
    directory: Path, name: str = "tinycloud", os_version: str = "tinycloud 1 (Debian 12 bookworm)"
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    image = directory / f"{name}-test.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    data = image.read_bytes()
    manifest = {
        "name": name,
        "os_version": os_version,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "min_ram_mib": 128,
        "min_disk_gib": 1,
    }
    image.with_suffix(".json").write_text(json.dumps(manifest))
    return image


@pytest.fixture
def api_settings(tmp_path: Path) -> dict[str, Any]:
    return {"seed_image": make_seed(tmp_path / "seed")}


def add_private_image(api: Any, owner: str, name: str) -> str:
    with session_scope(api.ctx.engine) as session:
        image = Image(
            name=name,
            owner=owner,
            visibility="private",
            status=ACTIVE,
            imagetype="private",
            checksum="0" * 64,
            size=1,
        )
        session.add(image)
    return image.id


def test_the_seed_image_is_public_for_every_project(api: Any) -> None:
    images = api.ims().list_images(ListImagesRequest()).images
    assert len(images) == 1
    seed = images[0]
    assert seed.name == "tinycloud-1-debian-12-bookworm"
    assert (seed.status, seed.visibility, seed.imagetype, seed.protected) == (
        "active",
        "public",
        "gold",
        True,
    )
    assert (seed.min_ram, seed.min_disk, seed.disk_format, seed.container_format) == (128, 1, "qcow2", "bare")
    assert (seed.os_type, seed.os_version, seed.isregistered) == (
        "Linux",
        "tinycloud 1 (Debian 12 bookworm)",
        "true",
    )
    assert isinstance(seed.size, int) and seed.size > 0 and len(seed.checksum) == 64
    assert seed._self == f"/v2/images/{seed.id}" and seed.tags == []
    assert seed.virtual_env_type == "FusionCompute" and seed.created_at.endswith("Z")
    other = api.new_project("tenant-b").ims().list_images(ListImagesRequest()).images
    assert [i.id for i in other] == [seed.id]


def test_private_images_are_seen_by_their_owner_only(api: Any) -> None:
    tenant_b = api.new_project("tenant-b")
    mine = add_private_image(api, api.project_id, "mine")
    theirs = add_private_image(api, tenant_b.project_id, "theirs")
    assert {i.name for i in api.ims().list_images(ListImagesRequest()).images} >= {"mine"}
    assert theirs not in {i.id for i in api.ims().list_images(ListImagesRequest()).images}
    assert mine not in {i.id for i in tenant_b.ims().list_images(ListImagesRequest()).images}
    assert [i.id for i in api.ims().list_images(ListImagesRequest(id=theirs)).images] == []


def test_filters_and_paging(api: Any) -> None:
    ims = api.ims()
    seed = ims.list_images(ListImagesRequest()).images[0]
    private = add_private_image(api, api.project_id, "snap")
    assert [i.id for i in ims.list_images(ListImagesRequest(imagetype="gold")).images] == [seed.id]
    assert [i.id for i in ims.list_images(ListImagesRequest(visibility="private")).images] == [private]
    assert [i.id for i in ims.list_images(ListImagesRequest(name="snap")).images] == [private]
    assert [i.id for i in ims.list_images(ListImagesRequest(os_type="Linux", status="active")).images] == [
        private,
        seed.id,
    ]  # newest first
    assert ims.list_images(ListImagesRequest(os_type="Windows")).images == []
    assert [i.id for i in ims.list_images(ListImagesRequest(limit=1)).images] == [private]
    assert [i.id for i in ims.list_images(ListImagesRequest(marker=private)).images] == [seed.id]
    expect_error(lambda: ims.list_images(ListImagesRequest(marker="nope")), 400, "IMG.0001")


def test_agents_download_the_file_with_a_grant(api: Any) -> None:
    """The URL the controller hands an agent (`ImageRef.url`) carries a grant for that image; the join token
    alone, which every host holds, opens nothing (more in test_transfer_grants.py)."""
    seed = api.ims().list_images(ListImagesRequest()).images[0]
    url = transfer_grants.signed_url(api.ctx.settings, "image", seed.id, "GET")
    join = {"Authorization": f"Bearer {api.ctx.join_token}"}
    with httpx.Client(trust_env=False) as client:
        response = client.get(url, headers=join)
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() == seed.checksum
        assert len(response.content) == seed.size
        assert client.get(url).status_code == 401
        assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        plain = client.get(url.partition("?")[0], headers=join)
        assert plain.status_code == 401 and plain.json()["error"]["code"] == "Agent.0401"
        missing = client.get(
            transfer_grants.signed_url(api.ctx.settings, "image", "nope", "GET"), headers=join
        )
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "IMG.0027"
