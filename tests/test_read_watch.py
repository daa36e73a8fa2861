"""The upstream body's timeouts with one timer per read (issue 18): what counts against first_byte, idle and total.

A fake response body feeds the body reader exactly what each test scripts;
only the waits on the upstream count, never the time the reader holds a chunk.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from ccproxyd.config import Provider, Timeouts
from ccproxyd.errors import UpstreamTimeout
from ccproxyd.upstream import UpstreamResponse, _ReadWatch


class FakeContent:
    """aiohttp's StreamReader, as far as the body reader uses it: chunks put on a queue, b"" at the end."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.ended = False
        self.waiting = asyncio.Event()  # set while a read waits on an empty queue

    async def readany(self) -> bytes:
        if self.queue.empty():
            self.waiting.set()
        try:
            chunk = await self.queue.get()
        finally:
            self.waiting.clear()
        self.ended = not chunk
        return chunk

    def at_eof(self) -> bool:
        return self.ended


class FakeResponse:
    def __init__(self) -> None:
        self.content = FakeContent()
        self.released = self.closed = False

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


def body(first_byte: float = 0, idle: float = 0, total: float = 0) -> tuple[FakeResponse, UpstreamResponse]:
    provider = Provider("p", "openai", "http://127.0.0.1:9/v1", timeouts=Timeouts(connect=1, first_byte=first_byte, idle=idle, total=total))
    raw = FakeResponse()
    now = time.monotonic()
    watch = _ReadWatch(now + first_byte if first_byte else None, now + total if total else None, idle or None, None)
    resp = UpstreamResponse(200, {}, None, raw, now, provider=provider, watch=watch)  # type: ignore[arg-type]
    resp.chunks = resp.read_chunks()
    return raw, resp


async def test_holding_chunks_longer_than_idle_is_not_a_stall() -> None:
    raw, resp = body(first_byte=5, idle=0.1)
    for chunk in (b"a", b"b", b"c", b""):
        raw.content.queue.put_nowait(chunk)
    got = []
    async for chunk in resp.chunks:
        got.append(chunk)
        await asyncio.sleep(0.25)  # the reader is slow (a slow client): the upstream sent everything already
    assert got == [b"a", b"b", b"c"] and raw.released


async def test_an_upstream_gap_longer_than_idle_is_a_stall() -> None:
    raw, resp = body(first_byte=5, idle=0.1)
    raw.content.queue.put_nowait(b"a")
    it = resp.chunks.__aiter__()
    assert await it.__anext__() == b"a"
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="stalled mid-stream for 0.1s"):
        await it.__anext__()
    assert 0.09 <= time.monotonic() - started < 2
    assert raw.closed and not raw.released


async def test_idle_applies_from_the_first_chunk_on_even_when_first_byte_is_longer() -> None:
    raw, resp = body(first_byte=30, idle=0.1)
    raw.content.queue.put_nowait(b"a")
    it = resp.chunks.__aiter__()
    await it.__anext__()
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="stalled"):
        await it.__anext__()
    assert time.monotonic() - started < 2  # not the 30 s first-byte limit


async def test_no_first_byte_in_time() -> None:
    raw, resp = body(first_byte=0.1, idle=5)
    with pytest.raises(UpstreamTimeout, match="sent no data within 0.1s"):
        await resp.chunks.__aiter__().__anext__()


async def test_idle_only_without_a_first_byte_limit() -> None:
    raw, resp = body(idle=0.1)
    raw.content.queue.put_nowait(b"a")
    it = resp.chunks.__aiter__()
    await it.__anext__()
    with pytest.raises(UpstreamTimeout, match="stalled"):
        await it.__anext__()


async def test_total_passing_while_the_reader_holds_a_chunk_fails_the_next_wait() -> None:
    raw, resp = body(first_byte=5, idle=5, total=0.15)
    raw.content.queue.put_nowait(b"a")
    it = resp.chunks.__aiter__()
    await it.__anext__()
    await asyncio.sleep(0.3)  # past the total deadline, outside any read
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="did not finish within 0.15s"):
        await it.__anext__()
    assert time.monotonic() - started < 1  # at once, not after idle


async def test_a_cancelled_reader_is_cancelled_not_timed_out() -> None:
    raw, resp = body(first_byte=5, idle=5)

    async def read() -> list[bytes]:
        return [c async for c in resp.chunks]

    task = asyncio.ensure_future(read())
    await raw.content.waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert raw.closed


async def test_before_read_is_awaited_before_every_wait_and_not_counted() -> None:
    raw, resp = body(first_byte=5, idle=0.1)
    calls = []

    async def flush() -> None:
        calls.append(raw.content.queue.qsize())
        await asyncio.sleep(0.25)  # a slow client write: longer than idle, and not the upstream's fault

    resp.before_read = flush
    for chunk in (b"a", b"b", b""):
        raw.content.queue.put_nowait(chunk)
    assert [c async for c in resp.chunks] == [b"a", b"b"]
    assert calls == [3, 2, 1]
