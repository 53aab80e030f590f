"""Moving large bodies between an async route and blocking storage code with few thread hops.

A request body arrives in the pieces the server reads (64-256 KiB); handing each to a worker thread costs a
thread wake-up both ways, which on a busy host costs more than the bytes. `consume_body` gathers the pieces
in the event loop and hands them to a blocking consumer running in one worker thread `BATCH` bytes at a time
through a small queue, so receiving the next batch overlaps writing and hashing the last one. The pieces are
not joined: a consumer that buffers (`agent.storage.streams.DurableFile`) copies them once anyway.
`stream_chunks` answers with an iterator of large chunks and the exact length, so the client can tell a cut
stream from a complete one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from typing import TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from fastapi.responses import StreamingResponse

T = TypeVar("T")

BATCH = 4 * 1024 * 1024  # bytes handed to the consumer at once
DEPTH = 2  # batches waiting for the consumer, at most


class _End:
    """Marks a body that arrived whole; a queue that closes without it means the body was cut short."""


class BodyCut(ConnectionError):
    """The request body stopped before its end (the client went away)."""


async def consume_body(body: AsyncIterable[bytes], consume: Callable[[Iterable[bytes]], T]) -> T:
    """Run `consume(chunks)` in a worker thread over the pieces of `body`, handed over `BATCH` bytes at once.

    `chunks` raises what reading the body raised (e.g. Starlette's ClientDisconnect) or BodyCut, never just
    ends early, so a consumer that commits at the end (the backup store's rename) never commits a cut body.
    """
    send, receive = anyio.create_memory_object_stream[list[bytes] | _End | BaseException](DEPTH)

    async def produce() -> None:
        async with send:
            pending: list[bytes] = []
            size = 0
            try:
                async for chunk in body:
                    pending.append(chunk)
                    size += len(chunk)
                    if size >= BATCH:
                        await send.send(pending)
                        pending, size = [], 0
                if pending:
                    await send.send(pending)
                await send.send(_End())
            except anyio.BrokenResourceError:
                pass  # the consumer stopped (and raised); nothing more to hand over
            except Exception as exc:
                # Hand the failure over; when the consumer already stopped, the send is refused.
                with contextlib.suppress(anyio.BrokenResourceError):
                    await send.send(exc)

    def chunks() -> Iterator[bytes]:
        while True:
            try:
                item = anyio.from_thread.run(receive.receive)
            except anyio.EndOfStream:
                raise BodyCut("the request body ended early") from None
            if isinstance(item, _End):
                return
            if isinstance(item, BaseException):
                raise item
            yield from item

    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        try:
            result = await anyio.to_thread.run_sync(consume, chunks())
        except Exception as exc:
            failure = exc  # raised below as itself, not wrapped in the task group's ExceptionGroup
        finally:
            receive.close()  # a producer blocked on a full queue gets BrokenResourceError
            tg.cancel_scope.cancel()  # and one waiting for more body stops waiting
    if failure is not None:
        raise failure
    return result


def stream_chunks(chunks: Iterator[bytes], size: int) -> StreamingResponse:
    """A download of `size` bytes from blocking `chunks` (each read in a worker thread: keep them large)."""
    return StreamingResponse(
        chunks, media_type="application/octet-stream", headers={"Content-Length": str(size)}
    )
