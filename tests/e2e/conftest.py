"""Fixtures for end-to-end tests: whole clouds started with `labcloud up` inside fresh test namespaces.

`cloud` is one cloud shared by the tests of a module (starting one takes 15 to 30 s); `cloud_factory` makes
clouds for a single test. Both tear down with `labcloud down --purge` and fail loudly if anything leaked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cloud import Cloud, CloudFactory, closing
from tests.support.image import tinycloud_image
from tests.support.keys import write_keypair
from tests.support.lab import Lab, running_lab


@pytest.fixture(scope="session")
def guest_image() -> Path:
    """Built (or found) once per session in the root namespace, where the package mirror is reachable.

    Clouds get it as LABCLOUD_SEED_IMAGE, so a recipe that changes during the session cannot send `up` inside
    a namespace (no network) off to rebuild; pass `{"LABCLOUD_SEED_IMAGE": ""}` to make `up` run the recipe.
    """
    return tinycloud_image()


@pytest.fixture(scope="module")
def cloud(guest_image: Path) -> Iterator[Cloud]:
    factory = CloudFactory(default_env={"LABCLOUD_SEED_IMAGE": str(guest_image)})
    for make in closing(factory):
        yield make()


@pytest.fixture
def cloud_factory(guest_image: Path) -> Iterator[CloudFactory]:
    yield from closing(CloudFactory(default_env={"LABCLOUD_SEED_IMAGE": str(guest_image)}))


@pytest.fixture(scope="module")
def lab(guest_image: Path) -> Iterator[Lab]:
    """`labcloud lab up --hosts 2 --azs 2`: a controller and two hosts (zones lab-1a, lab-1b) on an underlay."""
    with running_lab(hosts=2, azs=2, extra_env={"LABCLOUD_SEED_IMAGE": str(guest_image)}) as made:
        yield made


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[str, Path]:
    """A fresh ed25519 key pair: (OpenSSH public key, path of the private key file, 0600)."""
    return write_keypair(tmp_path / "id_ed25519")
