"""consume_body, the bridge from an async request body to the backup store's blocking writer, with the real
DirectoryStore as the consumer: a whole body is stored byte for byte, handed over in batches; a body cut short
stores nothing (no object, no hidden partial file); a consumer that fails stops the reading of the body."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import anyio
import pytest
from starlette.requests import ClientDisconnect

from controller.api.streaming import BATCH, consume_body
from controller.services.backup_store import DirectoryStore, StoredObject, StoreError

PIECE = 64 * 1024  # what a server reads at once


async def body(data: bytes, *, cut: BaseException | None = None) -> AsyncIterator[bytes]:
    for at in range(0, len(data), PIECE):
        yield data[at : at + PIECE]
        await anyio.sleep(0)
    if cut is not None:
        raise cut


def test_a_whole_body_is_stored_byte_for_byte_in_few_handovers(tmp_path: Path) -> None:
    data = bytes(range(256)) * (3 * BATCH // 256 + 1000)
    store = DirectoryStore(tmp_path)
    handovers: list[int] = []

    def put(chunks: Iterable[bytes]) -> StoredObject:
        def counted() -> Iterable[bytes]:
            for chunk in chunks:
                handovers.append(len(chunk))
                yield chunk

        return store.put("b.qcow2", counted())

    stored = anyio.run(consume_body, body(data), put)
    assert (tmp_path / "b.qcow2").read_bytes() == data
    assert stored.checksum == hashlib.sha256(data).hexdigest()
    assert sum(handovers) == len(data)


@pytest.mark.parametrize("cut", [ClientDisconnect(), ConnectionResetError("reset")])
def test_a_body_cut_short_stores_nothing(tmp_path: Path, cut: BaseException) -> None:
    store = DirectoryStore(tmp_path)
    with pytest.raises((type(cut), StoreError)):
        anyio.run(consume_body, body(b"y" * (2 * BATCH + 5), cut=cut), lambda c: store.put("b.qcow2", c))
    assert list(tmp_path.iterdir()) == []


def test_a_failing_consumer_stops_reading_the_body(tmp_path: Path) -> None:
    read = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal read
        while True:
            read += PIECE
            yield b"z" * PIECE
            await anyio.sleep(0)

    store = DirectoryStore(tmp_path)
    with pytest.raises(StoreError, match="invalid backup store key"):
        anyio.run(consume_body, endless(), lambda c: store.put("../escape", c))
    assert read < 16 * BATCH  # stopped early, not after reading everything there was
    assert list(tmp_path.iterdir()) == []
