"""DurableFile and BackgroundSha256 (the write-and-hash path of backup transfers) on real files: every mix of
piece sizes lands byte for byte with the sha256 of what was written, and the two buffers that are refilled
while the other is hashed never let a later piece leak into an earlier one's digest."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from agent.storage.streams import BATCH, WRITEBACK_STRETCH, BackgroundSha256, DurableFile


def pieces_of(data: bytes, rng: random.Random) -> list[bytes]:
    """`data` cut into pieces of the sizes a transfer produces: tiny, socket-sized, around and above BATCH."""
    sizes = [1, 100, 64 * 1024, BATCH - 1, BATCH, BATCH + 1, 3 * BATCH]
    pieces, at = [], 0
    while at < len(data):
        size = rng.choice([*sizes, rng.randint(1, 2 * BATCH)])
        pieces.append(data[at : at + size])
        at += size
    return pieces


@pytest.mark.parametrize("seed", range(6))
def test_durable_file_holds_every_piece_in_order_with_their_sha256(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    # Past the writeback stretch, so the helper thread starts writeback while writes go on.
    data = rng.randbytes(rng.randint(0, WRITEBACK_STRETCH + 5 * BATCH))
    target = tmp_path / "copy"
    with DurableFile(target) as out:
        for piece in pieces_of(data, rng):
            out.write(piece)
        checksum = out.finish()
        assert out.size == len(data)
    assert checksum == hashlib.sha256(data).hexdigest()
    assert target.read_bytes() == data


def test_durable_file_of_nothing_is_empty_with_the_empty_digest(tmp_path: Path) -> None:
    with DurableFile(tmp_path / "empty") as out:
        out.write(b"")
        assert out.finish() == hashlib.sha256(b"").hexdigest()
    assert (tmp_path / "empty").read_bytes() == b""


def test_a_durable_file_closed_unfinished_releases_its_descriptor(tmp_path: Path) -> None:
    """A transfer cut half way: the caller removes the file; nothing keeps it open."""
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ConnectionError), DurableFile(tmp_path / "cut") as out:
        out.write(b"x" * (BATCH + 10))
        raise ConnectionError("the sender went away")
    assert len(os.listdir("/proc/self/fd")) == before


def test_background_sha256_equals_hashlib_over_many_updates() -> None:
    rng = random.Random(7)
    data = rng.randbytes(3 * BATCH + 12345)
    with BackgroundSha256() as digest:
        for piece in pieces_of(data, rng):
            digest.update(piece)
        assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
