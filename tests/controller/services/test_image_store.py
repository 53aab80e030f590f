"""The image store: seed registration (idempotent, hard link or verified copy), lookups and ImageRefs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, select

from controller.config import Settings
from controller.context import ControllerContext
from controller.db import session_scope
from controller.errors import NotFound
from controller.main import build_context
from controller.models.flavor import Flavor
from controller.models.image import DELETED, Image
from controller.services import image_store, transfer_grants


def make_seed(directory: Path, *, sha256: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    image = directory / "tinycloud-abc.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "32M"], check=True)
    data = image.read_bytes()
    manifest = {
        "name": "tinycloud",
        "key": "abc",
        "os_version": "tinycloud 1 (Debian 12 bookworm)",
        "sha256": sha256 or hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "min_ram_mib": 128,
        "min_disk_gib": 1,
    }
    image.with_suffix(".json").write_text(json.dumps(manifest))
    return image


@pytest.fixture
def context(tmp_path: Path) -> Iterator[ControllerContext]:
    ctx = build_context(Settings(home=tmp_path / "home", seed_image=None, listen_port=18555))
    yield ctx
    ctx.engine.dispose()


def images(ctx: ControllerContext) -> list[Image]:
    with Session(ctx.engine) as session:
        return list(session.exec(select(Image)).all())


def test_without_a_seed_only_flavors_are_seeded(context: ControllerContext) -> None:
    assert image_store.register_seed_image(context) is None
    assert images(context) == []
    with Session(context.engine) as session:
        assert len(session.exec(select(Flavor)).all()) == 6


def test_seed_is_registered_once_as_a_hard_linked_public_image(
    context: ControllerContext, tmp_path: Path
) -> None:
    seed = make_seed(tmp_path / "cache")
    context.settings.seed_image = seed
    image = image_store.register_seed_image(context)
    assert image is not None
    manifest = json.loads(seed.with_suffix(".json").read_text())
    assert image.id == str(uuid.uuid5(image_store.SEED_NAMESPACE, manifest["sha256"]))
    assert (image.name, image.visibility, image.owner, image.imagetype, image.status) == (
        "tinycloud-1-debian-12-bookworm",
        "public",
        None,
        "gold",
        "active",
    )
    assert (image.checksum, image.size, image.min_ram, image.min_disk) == (
        manifest["sha256"],
        manifest["size"],
        128,
        1,
    )
    stored = Path(image.file_path or "")
    assert stored == context.settings.image_dir / f"{image.id}.qcow2"
    assert os.stat(stored).st_ino == os.stat(seed).st_ino  # same filesystem: a link, not a copy

    again = image_store.register_seed_image(context)
    assert again is not None and again.id == image.id
    assert [i.id for i in images(context)] == [image.id]


def test_a_missing_store_file_is_restored(context: ControllerContext, tmp_path: Path) -> None:
    context.settings.seed_image = make_seed(tmp_path / "cache")
    image = image_store.register_seed_image(context)
    assert image is not None and image.file_path
    Path(image.file_path).unlink()
    restored = image_store.register_seed_image(context)
    assert restored is not None and restored.id == image.id and Path(image.file_path).is_file()
    assert len(images(context)) == 1


def test_across_filesystems_the_seed_is_copied_and_verified(context: ControllerContext) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(context.settings.image_dir).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the image store")
    directory = shm / f"lctest-seed-{uuid.uuid4().hex[:8]}"
    try:
        context.settings.seed_image = make_seed(directory)
        image = image_store.register_seed_image(context)
        assert image is not None and image.file_path
        stored = Path(image.file_path)
        assert os.stat(stored).st_ino != os.stat(context.settings.seed_image).st_ino
        assert image_store.sha256_of(stored) == image.checksum
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_seed_that_does_not_match_its_manifest_is_refused(
    context: ControllerContext, tmp_path: Path
) -> None:
    context.settings.seed_image = make_seed(tmp_path / "cache", sha256="ab" * 32)
    with pytest.raises(image_store.SeedImageError, match="manifest says"):
        image_store.register_seed_image(context)
    assert images(context) == []
    assert [p.name for p in context.settings.image_dir.iterdir()] == []


def test_a_seed_without_manifest_is_refused(context: ControllerContext, tmp_path: Path) -> None:
    seed = make_seed(tmp_path / "cache")
    seed.with_suffix(".json").unlink()
    context.settings.seed_image = seed
    with pytest.raises(image_store.SeedImageError, match="manifest"):
        image_store.register_seed_image(context)


def test_visibility_and_image_refs(context: ControllerContext, tmp_path: Path) -> None:
    context.settings.seed_image = make_seed(tmp_path / "cache")
    public = image_store.register_seed_image(context)
    assert public is not None
    with session_scope(context.engine) as session:
        private = Image(name="snap", owner="p1", visibility="private", status="active", checksum="c" * 64)
        gone = Image(name="old", owner="p1", visibility="private", status=DELETED, checksum="d" * 64)
        session.add_all([private, gone])
    with Session(context.engine) as session:
        assert image_store.get_image(session, "p2", public.id).id == public.id
        assert image_store.get_image(session, "p1", private.id).id == private.id
        for project, image_id in (("p2", private.id), ("p1", gone.id), ("p1", "nope")):
            with pytest.raises(NotFound):
                image_store.get_image(session, project, image_id)
        ref = image_store.image_ref(image_store.get_image(session, "p1", public.id), context.settings)
    # A presigned URL: a grant for reading this image only (`transfer_grants`).
    path, _, query = ref.url.partition("?grant=")
    assert path == f"http://127.0.0.1:18555/internal/images/{public.id}/file"
    transfer_grants.check(context.settings, "image", public.id, "GET", query)
    assert (ref.id, ref.checksum, ref.disk_format, ref.min_disk_gib) == (
        public.id,
        public.checksum,
        "qcow2",
        1,
    )
