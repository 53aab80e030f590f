from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from agent.errors import StorageError
from agent.schemas import ImageRef
from agent.storage.disks import create_overlay
from agent.storage.images import ImageCache

from .conftest import FileServer, make_qcow2, sha256_of

Served = tuple[Path, str]  # a qcow2 file in the server's root and its sha256


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[ImageCache]:
    c = ImageCache(tmp_path / "cache")
    yield c
    c.close()


@pytest.fixture
def served_image(file_server: FileServer) -> Served:
    image = make_qcow2(file_server.root / "tiny.qcow2", size="32M", pattern=0x42)
    return image, sha256_of(image)


def ref(url: str, checksum: str) -> ImageRef:
    return ImageRef(id="img-1", checksum=checksum, url=url)


def test_downloads_once_and_verifies(
    cache: ImageCache, file_server: FileServer, served_image: Served
) -> None:
    image, checksum = served_image
    assert not cache.has(checksum)

    path = cache.ensure(ref(f"{file_server.url}/tiny.qcow2", checksum))

    assert path == cache.directory / f"{checksum}.qcow2"
    assert path.read_bytes() == image.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert cache.has(checksum)
    assert cache.ensure(ref(f"{file_server.url}/tiny.qcow2", checksum)) == path
    assert file_server.gets["/tiny.qcow2"] == 1
    assert sorted(os.listdir(cache.directory)) == [f"{checksum}.qcow2"]

    create_overlay(path, cache.directory.parent / "root.qcow2", 1)  # usable as a base


def test_checksum_mismatch_leaves_nothing(
    cache: ImageCache, file_server: FileServer, served_image: Served
) -> None:
    assert served_image[0].exists()
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(StorageError, match="sha256"):
        cache.ensure(ref(f"{file_server.url}/tiny.qcow2", wrong))
    assert os.listdir(cache.directory) == []
    assert not cache.has(wrong)


def test_http_error_leaves_nothing(cache: ImageCache, file_server: FileServer) -> None:
    with pytest.raises(StorageError, match="404"):
        cache.ensure(ref(f"{file_server.url}/missing.qcow2", "a" * 64))
    assert os.listdir(cache.directory) == []


def test_concurrent_ensures_download_once(
    cache: ImageCache, file_server: FileServer, served_image: Served
) -> None:
    _, checksum = served_image
    file_server.delay = 0.3  # keep the first download in flight while the others arrive
    start = threading.Barrier(4)

    def ensure(_: int) -> Path:
        start.wait()
        return cache.ensure(ref(f"{file_server.url}/tiny.qcow2", checksum))

    with ThreadPoolExecutor(4) as pool:
        paths = set(pool.map(ensure, range(4)))

    assert paths == {cache.path_for(checksum)}
    assert file_server.gets["/tiny.qcow2"] == 1


def test_uses_the_given_http_client(tmp_path: Path, file_server: FileServer, served_image: Served) -> None:
    _, checksum = served_image
    seen: list[str] = []
    client = httpx.Client(event_hooks={"request": [lambda request: seen.append(str(request.url))]})
    with client:
        ImageCache(tmp_path / "cache", client=client).ensure(ref(f"{file_server.url}/tiny.qcow2", checksum))
    assert seen == [f"{file_server.url}/tiny.qcow2"]


def test_file_url_hard_links_on_the_same_filesystem(cache: ImageCache, tmp_path: Path) -> None:
    source = make_qcow2(tmp_path / "store.qcow2", size="32M", pattern=7)
    checksum = sha256_of(source)
    path = cache.ensure(ref(source.as_uri(), checksum))
    assert path.stat().st_ino == source.stat().st_ino
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_file_url_copies_across_filesystems(cache: ImageCache) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == cache.directory.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the cache")
    source = make_qcow2(shm / f"lctest-store-{os.getpid()}.qcow2", size="32M", pattern=9)
    try:
        checksum = sha256_of(source)
        path = cache.ensure(ref(source.as_uri(), checksum))
        assert path.stat().st_ino != source.stat().st_ino
        assert path.read_bytes() == source.read_bytes()
    finally:
        source.unlink()


def test_file_url_mismatch_keeps_the_source(cache: ImageCache, tmp_path: Path) -> None:
    source = make_qcow2(tmp_path / "store.qcow2", size="32M")
    before = sha256_of(source)
    with pytest.raises(StorageError, match="sha256"):
        cache.ensure(ref(source.as_uri(), "0" * 64))
    assert sha256_of(source) == before
    assert os.listdir(cache.directory) == []


def test_missing_file_url(cache: ImageCache, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        cache.ensure(ref((tmp_path / "gone.qcow2").as_uri(), "0" * 64))


def test_content_that_is_not_qcow2_is_refused(cache: ImageCache, file_server: FileServer) -> None:
    (file_server.root / "fake.qcow2").write_bytes(b"\0" * 65536)
    checksum = sha256_of(file_server.root / "fake.qcow2")
    with pytest.raises(StorageError, match="qcow2"):
        cache.ensure(ref(f"{file_server.url}/fake.qcow2", checksum))
    assert os.listdir(cache.directory) == []


def test_image_with_a_backing_file_is_refused(
    cache: ImageCache, file_server: FileServer, served_image: Served
) -> None:
    base, _ = served_image
    crafted = file_server.root / "crafted.qcow2"
    create_overlay(base, crafted, 1)  # points at a host path
    with pytest.raises(StorageError, match="backing file"):
        cache.ensure(ref(f"{file_server.url}/crafted.qcow2", sha256_of(crafted)))
    assert os.listdir(cache.directory) == []


@pytest.mark.parametrize("checksum", ["", "abc", "g" * 64, "../" + "a" * 61])
def test_bad_checksums(cache: ImageCache, checksum: str) -> None:
    with pytest.raises(StorageError):
        cache.has(checksum)


def test_checksum_case_and_prefix_are_normalized(cache: ImageCache) -> None:
    assert cache.path_for("sha256:" + "AB" * 32) == cache.directory / f"{'ab' * 32}.qcow2"


def test_other_schemes_and_formats_are_refused(cache: ImageCache) -> None:
    with pytest.raises(StorageError, match="scheme"):
        cache.ensure(ref("ftp://example.invalid/x.qcow2", "a" * 64))
    with pytest.raises(StorageError, match="not qcow2"):
        cache.ensure(ImageRef(id="i", checksum="a" * 64, url="file:///x.raw", disk_format="raw"))


def test_partial_downloads_from_a_crash_are_removed(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    directory.mkdir()
    (directory / ".partial-0123456789abcdef-xyz").write_bytes(b"half")
    ImageCache(directory).close()
    assert os.listdir(directory) == []
