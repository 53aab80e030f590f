"""Fixtures for end-to-end tests: whole clouds started with `labcloud up` inside fresh test namespaces.

`cloud` is one cloud shared by the tests of a module (starting one takes 15 to 30 s); `cloud_factory` makes
clouds for a single test. Both tear down with `labcloud down --purge` and fail loudly if anything leaked.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cloud import Cloud, CloudFactory, closing
from tests.support.image import tinycloud_image


@pytest.fixture(scope="session")
def warm_image_cache() -> None:
    # Build in the root namespace, where the package mirror is reachable; `up` inside a namespace then only
    # finds the cached image.
    tinycloud_image()


@pytest.fixture(scope="module")
def cloud(warm_image_cache: None) -> Iterator[Cloud]:
    factory = CloudFactory()
    for make in closing(factory):
        yield make()


@pytest.fixture
def cloud_factory(warm_image_cache: None) -> Iterator[CloudFactory]:
    yield from closing(CloudFactory())
