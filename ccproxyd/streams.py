"""Wire framing shared by every adapter: SSE and NDJSON, both directions.

Parsers are incremental: they hold at most one incomplete frame, so memory
stays flat however long the stream runs.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import AsyncIterable, AsyncIterator

import orjson

MAX_FRAME = 8 * 1024 * 1024  # one frame larger than this is an upstream fault


class FrameTooLarge(ValueError):
    pass


@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: str


class LineSplitter:
    """Lines (without their LF/CRLF/CR ending) from a byte stream, fed a chunk at a time.

    Only each new chunk is scanned, and an incomplete line is kept as pieces joined once it ends,
    so a long line arriving a few bytes at a time costs linear, not quadratic, time.
    """

    __slots__ = ("pending", "pending_size", "after_cr")

    def __init__(self) -> None:
        self.pending: list[bytes] = []  # pieces of the line not yet ended
        self.pending_size = 0
        self.after_cr = False  # the previous chunk ended in CR: a leading LF now belongs to that CRLF

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines ``chunk`` ends; call :meth:`check` once they are used."""
        if not chunk:
            return []
        if self.after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self.after_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:  # CR alone is a line ending in SSE too
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, rest = chunk.split(b"\n")
        if lines and self.pending:
            lines[0] = b"".join(self.pending) + lines[0]
            self.pending, self.pending_size = [], 0
        if rest:
            self.pending.append(rest)
            self.pending_size += len(rest)
        return lines

    def check(self) -> None:
        """Refuse a line still unended past MAX_FRAME (after the lines before it were used)."""
        if self.pending_size > MAX_FRAME:
            raise FrameTooLarge("upstream sent a line longer than %d bytes" % MAX_FRAME)

    def close(self) -> list[bytes]:
        """A last unterminated line."""
        return [b"".join(self.pending)] if self.pending else []


async def iter_lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Lines (without their LF/CRLF/CR ending) from a byte stream; a last unterminated line is yielded too."""
    splitter = LineSplitter()
    async for chunk in chunks:
        for line in splitter.feed(chunk):
            yield line
        splitter.check()
    for line in splitter.close():
        yield line


class _SSEParser:
    """The WHATWG event-stream rules for one line at a time."""

    __slots__ = ("event", "data", "size", "first")

    def __init__(self) -> None:
        self.event: str | None = None
        self.data: list[str] = []
        self.size = 0
        self.first = True

    def line(self, raw: bytes) -> SSEEvent | None:
        """The event this line completes, if any."""
        if self.first:
            raw, self.first = raw.removeprefix(b"\xef\xbb\xbf"), False  # a byte order mark may open the stream
        if not raw:
            done = SSEEvent(self.event, "\n".join(self.data)) if self.data else None
            self.event, self.data, self.size = None, [], 0
            return done
        if raw.startswith(b"data:"):  # most lines: decode only the value
            name, value = "data", raw[5:].decode("utf-8", "replace")
        else:
            line = raw.decode("utf-8", "replace")
            if line.startswith(":"):
                return None
            name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self.data.append(value)
            self.size += len(value)
            if self.size > MAX_FRAME:
                raise FrameTooLarge("upstream sent an SSE event larger than %d bytes" % MAX_FRAME)
        elif name == "event":
            self.event = value
        return None

    def close(self) -> SSEEvent | None:
        return SSEEvent(self.event, "\n".join(self.data)) if self.data else None


class SSEDecoder:
    """Server-sent events from a byte stream fed a chunk at a time: :func:`iter_sse` for a loop that
    reads the chunks itself (one async generator less per chunk). After using the events of each
    :meth:`feed`, call :meth:`check`: a frame grown too large is refused there, after the events before it."""

    __slots__ = ("splitter", "parser", "failure")

    def __init__(self) -> None:
        self.splitter = LineSplitter()
        self.parser = _SSEParser()
        self.failure: FrameTooLarge | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        data = self._data_only(chunk)
        if data is not None:
            return [SSEEvent(None, value) for value in data]
        events = []
        try:
            for raw in self.splitter.feed(chunk):
                if (event := self.parser.line(raw)) is not None:
                    events.append(event)
        except FrameTooLarge as e:
            self.failure = e
        return events

    def _data_only(self, chunk: bytes) -> list[str] | None:
        """The events' data when ``chunk`` is nothing but whole one-line ``data: ...`` events and nothing is
        pending (the usual upstream read): what the line rules in :meth:`feed` give, taken directly. Else None."""
        if not (chunk.startswith(b"data: ") and chunk.endswith(b"\n\n")) or b"\r" in chunk:
            return None
        if self.splitter.pending or self.parser.data or self.parser.event is not None:
            return None
        frames = chunk[:-2].split(b"\n\n")
        for frame in frames:
            if not frame.startswith(b"data: ") or b"\n" in frame or len(frame) - 6 > MAX_FRAME:
                return None
        self.parser.first, self.splitter.after_cr = False, False
        return [frame[6:].decode("utf-8", "replace") for frame in frames]

    def check(self) -> None:
        if self.failure is not None:
            raise self.failure
        self.splitter.check()

    def close(self) -> list[SSEEvent]:
        """The events a last unterminated line and unfinished event complete."""
        events = [event for raw in self.splitter.close() if (event := self.parser.line(raw)) is not None]
        if (event := self.parser.close()) is not None:
            events.append(event)
        return events


async def close_chunks(chunks: AsyncIterable[bytes]) -> None:
    """Chunks given up early are closed now, not by a task once collected."""
    if isinstance(chunks, AsyncGenerator):
        await chunks.aclose()


async def iter_sse(chunks: AsyncIterable[bytes], head: bytes = b"") -> AsyncIterator[SSEEvent]:
    """Server-sent events per the WHATWG spec: comments ignored, multi-line data joined.

    One generator over the chunks (lines are split in the same loop, not by another generator);
    ``head``: bytes already read off the stream, parsed first."""
    sse = SSEDecoder()
    if head:
        for event in sse.feed(head):
            yield event
        sse.check()
    try:
        async for chunk in chunks:
            for event in sse.feed(chunk):
                yield event
            sse.check()
    finally:  # given up early, the chunks are given up with it
        await close_chunks(chunks)
    for event in sse.close():
        yield event


async def iter_ndjson(chunks: AsyncIterable[bytes]) -> AsyncIterator[object]:
    """Parsed JSON values, one per non-empty line."""
    async for line in iter_lines(chunks):
        if line.strip():
            yield orjson.loads(line)


def sse_frame(data: object, event: str | None = None) -> bytes:
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    if event is None:
        return b"data: " + payload + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


def ndjson_line(data: object) -> bytes:
    return orjson.dumps(data) + b"\n"
