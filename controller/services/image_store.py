"""The controller's image store: IMS image rows, their files under `settings.image_dir`, and the seed image.

Files are named `<image id>.qcow2` and only ever replaced by rename, so an agent streaming one (or a hard link
to one in an all-in-one agent's cache) never sees it change. Agents fetch a file from
`GET /internal/images/{id}/file` and verify it against the row's sha256 `checksum`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from agent.schemas import ImageRef
from controller.config import Settings
from controller.db import session_scope
from controller.errors import BadRequest, NotFound
from controller.models.common import utcnow
from controller.models.image import ACTIVE, DELETED, Image
from controller.services import transfer_grants
from controller.services.flavors import seed_flavors

if TYPE_CHECKING:
    from controller.context import ControllerContext

log = logging.getLogger(__name__)

IMAGE_NOT_FOUND = "IMG.0027"
BAD = "IMG.0001"
# Seed image ids are uuid5(namespace, sha256): the same file gets the same id on every controller.
SEED_NAMESPACE = uuid.UUID("6f1c5a52-3c2e-4a59-9d0b-6c1d3f7d2b10")
_CHUNK = 1024 * 1024
FILTERABLE = frozenset(
    {
        "id",
        "name",
        "status",
        "visibility",
        "imagetype",
        "os_type",
        "platform",
        "disk_format",
        "container_format",
        "owner",
    }
)


class SeedImageError(Exception):
    """The configured seed image or its manifest is missing or does not match."""


@dataclass(frozen=True)
class SeedManifest:
    name: str
    os_version: str
    sha256: str
    size: int
    min_ram_mib: int
    min_disk_gib: int
    platform: str = "Other"

    @classmethod
    def load(cls, image: Path) -> SeedManifest:
        path = image.with_suffix(".json")
        try:
            doc: dict[str, Any] = json.loads(path.read_text())
            return cls(
                name=str(doc["name"]),
                os_version=str(doc["os_version"]),
                sha256=str(doc["sha256"]).lower(),
                size=int(doc["size"]),
                min_ram_mib=int(doc["min_ram_mib"]),
                min_disk_gib=int(doc["min_disk_gib"]),
                platform=str(doc.get("platform") or "Other"),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SeedImageError(f"seed image manifest {path} is missing or invalid: {exc!r}") from exc

    @property
    def image_name(self) -> str:
        """`<name>-<version slug>`, e.g. `tinycloud-1-debian-12-bookworm` for os_version
        "tinycloud 1 (Debian 12 bookworm)" (a leading repeat of the name is dropped from the version)."""
        version = self.os_version
        if version.lower().startswith(self.name.lower()):
            version = version[len(self.name) :]
        slug = re.sub(r"[^a-z0-9.]+", "-", version.lower()).strip("-")
        return f"{self.name}-{slug}" if slug else self.name


# --- startup ---


def register_seed_image(ctx: ControllerContext) -> Image | None:
    """Startup hook: seed the default flavors, then register `settings.seed_image` as a public image.

    Idempotent: an image with the same checksum is registered once (its file is restored if it went missing).
    """
    _seed_flavors(ctx)
    source = ctx.settings.seed_image
    if source is None:
        return None
    manifest = SeedManifest.load(source)
    with session_scope(ctx.engine) as session:
        existing = _public_by_checksum(session, manifest.sha256)
    if existing is not None and existing.file_path and _has_file(Path(existing.file_path), manifest.size):
        log.debug("seed image %s already registered as %s", source, existing.id)
        return existing
    image_id = existing.id if existing is not None else str(uuid.uuid5(SEED_NAMESPACE, manifest.sha256))
    target = ctx.settings.image_dir / f"{image_id}.qcow2"
    store_file(source, target, expected_sha256=manifest.sha256, expected_size=manifest.size)
    with session_scope(ctx.engine) as session:
        image = session.get(Image, image_id) or Image(id=image_id, name=manifest.image_name)
        image.name = manifest.image_name
        image.owner, image.visibility, image.imagetype, image.protected = None, "public", "gold", True
        image.status, image.checksum, image.size = ACTIVE, manifest.sha256, manifest.size
        image.min_ram, image.min_disk = manifest.min_ram_mib, manifest.min_disk_gib
        image.os_type, image.os_version, image.platform = "Linux", manifest.os_version, manifest.platform
        image.file_path, image.updated_at = str(target), utcnow()
        image.description = f"Seed image {source.name}"
        session.add(image)
    log.info("registered seed image %s as public image %s (%s)", source, image.id, image.name)
    return image


def _seed_flavors(ctx: ControllerContext) -> None:
    for attempt in range(3):
        try:
            with session_scope(ctx.engine) as session:
                seed_flavors(session)
            return
        except IntegrityError:
            # Another controller sharing the database seeded them at the same moment.
            log.debug("flavor seeding raced with another controller (attempt %s)", attempt + 1)
    with session_scope(ctx.engine) as session:
        seed_flavors(session)


def _public_by_checksum(session: Session, checksum: str) -> Image | None:
    stmt = select(Image).where(
        Image.checksum == checksum, col(Image.owner).is_(None), Image.status != DELETED
    )
    return session.exec(stmt.order_by(col(Image.created_at))).first()


def _has_file(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def store_file(source: Path, target: Path, *, expected_sha256: str, expected_size: int | None = None) -> None:
    """Put `source` at `target` (hard link on the same filesystem, else a copy), checked against its sha256.

    The file appears under its final name only complete and verified, by rename.
    """
    if not source.is_file():
        raise SeedImageError(f"image file {source} does not exist")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            os.link(source, tmp)
            digest = sha256_of(tmp)
        except OSError as exc:
            log.debug("cannot hard-link %s into the image store (%s); copying", source, exc)
            digest = _copy_hashing(source, tmp)
        size = tmp.stat().st_size
        if digest != expected_sha256.lower() or (expected_size is not None and size != expected_size):
            raise SeedImageError(
                f"image file {source} has sha256 {digest} and {size} bytes; its manifest says "
                f"{expected_sha256} and {expected_size} bytes"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def remove_file(path: str | None) -> None:
    """Remove an image's file from the store. An agent streaming it keeps its open file until done."""
    if path:
        Path(path).unlink(missing_ok=True)
        log.info("removed image file %s", path)


def sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _copy_hashing(source: Path, dest: Path) -> str:
    hasher = hashlib.sha256()
    with source.open("rb") as src, dest.open("xb") as out:
        while chunk := src.read(_CHUNK):
            hasher.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return hasher.hexdigest()


# --- lookups ---


def visible(image: Image, project_id: str) -> bool:
    return image.status != DELETED and (image.visibility == "public" or image.owner == project_id)


def get_image(session: Session, project_id: str, image_id: str) -> Image:
    """A public image or one the project owns (any status but deleted); else 404."""
    image = session.get(Image, image_id)
    if image is None or not visible(image, project_id):
        raise NotFound(f"Image [{image_id}] could not be found.", code=IMAGE_NOT_FOUND)
    return image


def image_ref(image: Image, settings: Settings) -> ImageRef:
    if not image.checksum:
        raise BadRequest(f"Image {image.id} has no file yet (status {image.status})", code=BAD)
    return ImageRef(
        id=image.id,
        checksum=image.checksum,
        url=transfer_grants.signed_url(settings, "image", image.id, "GET"),
        disk_format=image.disk_format,
        min_disk_gib=image.min_disk,
    )


def image_file(session: Session, image_id: str) -> Path:
    """The file of an active image, for the agents' download route."""
    image = session.get(Image, image_id)
    if image is None or image.status != ACTIVE or not image.file_path or not Path(image.file_path).is_file():
        raise NotFound(f"Image [{image_id}] has no file to download.", code=IMAGE_NOT_FOUND)
    return Path(image.file_path)


def list_images(
    session: Session,
    project_id: str,
    *,
    filters: dict[str, str | None],
    marker: str | None = None,
    limit: int | None = None,
) -> list[Image]:
    """Images the project can see, newest first (IMS's default order), narrowed by exact-match `filters`
    on Image attributes (e.g. name, status, visibility, imagetype, os_type); deleted ones only when asked."""
    stmt = select(Image).where((col(Image.visibility) == "public") | (col(Image.owner) == project_id))
    for attr, value in filters.items():
        if attr not in FILTERABLE:
            raise ValueError(f"images cannot be filtered by {attr!r}")
        if value is not None:
            stmt = stmt.where(getattr(Image, attr) == value)
    if filters.get("status") != DELETED:
        stmt = stmt.where(Image.status != DELETED)
    images = list(session.exec(stmt.order_by(col(Image.created_at).desc(), col(Image.id).desc())).all())
    if marker:
        ids = [i.id for i in images]
        if marker not in ids:
            raise BadRequest(f"Invalid marker {marker!r}: no such image", code=BAD)
        images = images[ids.index(marker) + 1 :]
    return images[:limit] if limit else images
