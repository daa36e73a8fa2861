"""Wire framing shared by every adapter: SSE and NDJSON, both directions.

Parsers are incremental: they hold at most one incomplete frame, so memory
stays flat however long the stream runs.
"""

from __future__ import annotations

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


async def iter_lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Lines (without their LF/CRLF/CR ending) from a byte stream; a last unterminated line is yielded too.

    Only each new chunk is scanned, and an incomplete line is kept as pieces joined once it ends,
    so a long line arriving a few bytes at a time costs linear, not quadratic, time.
    """
    pending: list[bytes] = []  # pieces of the line not yet ended
    pending_size = 0
    after_cr = False  # the previous chunk ended in CR: a leading LF now belongs to that CRLF
    async for chunk in chunks:
        if not chunk:
            continue
        if after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        after_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:  # CR alone is a line ending in SSE too
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, rest = chunk.split(b"\n")
        if lines:
            if pending:
                lines[0] = b"".join(pending) + lines[0]
                pending, pending_size = [], 0
            for line in lines:
                yield line
        if rest:
            pending.append(rest)
            pending_size += len(rest)
            if pending_size > MAX_FRAME:
                raise FrameTooLarge("upstream sent a line longer than %d bytes" % MAX_FRAME)
    if pending:
        yield b"".join(pending)


async def iter_sse(chunks: AsyncIterable[bytes]) -> AsyncIterator[SSEEvent]:
    """Server-sent events per the WHATWG spec: comments ignored, multi-line data joined."""
    event: str | None = None
    data: list[str] = []
    size = 0
    first = True
    async for raw in iter_lines(chunks):
        if first:
            raw, first = raw.removeprefix(b"\xef\xbb\xbf"), False  # a byte order mark may open the stream
        if not raw:
            if data:
                yield SSEEvent(event, "\n".join(data))
            event, data, size = None, [], 0
            continue
        line = raw.decode("utf-8", "replace")
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
            size += len(value)
            if size > MAX_FRAME:
                raise FrameTooLarge("upstream sent an SSE event larger than %d bytes" % MAX_FRAME)
        elif name == "event":
            event = value
    if data:
        yield SSEEvent(event, "\n".join(data))


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
