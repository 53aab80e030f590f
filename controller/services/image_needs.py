"""What an image needs from the host that runs it, for the scheduler's image filter.

An image needs a host accelerator when it carries the tag `accelerator=<kind>` (IMS `image_tags` key
`accelerator`, or the plain tag in Glance/IMS `tags`): `accelerator=kvm` for a guest that only runs with hardware
virtualisation (too slow or unsupported under TCG). Hosts report their accelerator (kvm or tcg) in every
heartbeat; the scheduler places such a server only on a host whose accelerator matches, and with none up and
enabled the create ends FAIL with the reason per host.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlmodel import Session, select

from controller.models.image import Image

ACCELERATOR_TAG = "accelerator"


def required_accelerator(tags: Iterable[str]) -> str | None:
    """The accelerator an image with these tags needs, or None (any host will do)."""
    for tag in tags:
        key, sep, value = tag.partition("=")
        if sep and key.strip() == ACCELERATOR_TAG and value.strip():
            return value.strip().lower()
    return None


def image_accelerator(session: Session, image_id: str) -> str | None:
    """The accelerator the image `image_id` needs (None also for an image that has gone)."""
    tags = session.exec(select(Image.tags).where(Image.id == image_id)).first()
    return required_accelerator(tags or [])
