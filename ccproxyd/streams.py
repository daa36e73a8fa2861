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
    """Lines (without their LF/CRLF/CR ending) from a byte stream; a last unterminated line is yielded too."""
    buf = b""
    async for chunk in chunks:
        if not chunk:
            continue
        buf += chunk
        # CR alone is a line ending in SSE; normalise CRLF first, then CR, unless a CR ends the buffer
        if b"\r" in buf:
            tail_cr = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n")
            if tail_cr:
                buf = buf[:-1].replace(b"\r", b"\n") + b"\r"
            else:
                buf = buf.replace(b"\r", b"\n")
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line
        if len(buf) > MAX_FRAME:
            raise FrameTooLarge("upstream sent a line longer than %d bytes" % MAX_FRAME)
    buf = buf.rstrip(b"\r")
    if buf:
        yield buf


async def iter_sse(chunks: AsyncIterable[bytes]) -> AsyncIterator[SSEEvent]:
    """Server-sent events per the WHATWG spec: comments ignored, multi-line data joined."""
    event: str | None = None
    data: list[str] = []
    size = 0
    async for raw in iter_lines(chunks):
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
