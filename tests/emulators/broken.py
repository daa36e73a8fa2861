"""An upstream that breaks the wire on purpose, for any of the four protocols.

:class:`BrokenUpstream` is a raw TCP server in front of a well-behaved emulator
of the same protocol: it forwards each request to that emulator, takes the exact
bytes of its documented answer, and sends them back damaged as one :data:`FAULTS`
entry says — down to the byte and the timing, which an aiohttp handler cannot
do. It counts the connections it is still answering, so a test can see that
ccproxyd let go of a connection whose answer never ended.
"""

from __future__ import annotations

import asyncio
import gzip

import aiohttp

FAULTS = {
    "invalid_json": "a body or a stream frame that is not JSON",
    "no_terminator": "a stream without its last part ([DONE], message_stop, the finishing frame or done line)",
    "cut_mid_frame": "the body ends cleanly in the middle of a frame",
    "abort_mid_frame": "the connection drops in the middle of a frame",
    "split_bytes": "every byte in its own chunk",
    "crlf": "CRLF line endings",
    "comments": "SSE comment lines before every event",
    "unknown_events": "an SSE event of a type no documentation names",
    "gzip": "the body gzip-encoded",
    "brotli": "the body brotli-encoded",
    "error_200": "status 200 with the protocol's error body",
    "never_ending": "a stream that repeats its first content frame forever",
    "slow_drip": "the body one byte at a time, slowly",
    "slow_drip_headers": "the whole answer, status line first, one byte at a time",
}
SSE_ONLY = frozenset({"comments", "unknown_events"})
TERMINATORS = {"openai": b"data: [DONE]", "claude": b"event: message_stop"}
_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "accept-encoding", "keep-alive"})
_MAX_FOREVER = 20_000  # frames of a "never-ending" stream before it gives up on its own


class BrokenUpstream:
    def __init__(self, inner_url: str, fault: str, drip: float = 0.02, marker: bytes = b"Quo") -> None:
        assert fault in FAULTS, fault
        self.inner_url = inner_url
        self.fault = fault
        self.marker = marker  # bytes of the first text piece: its frame is the one a never-ending stream repeats
        self.drip = drip  # seconds between bytes when dripping, between frames when never ending
        self.busy = 0  # connections with an answer still being written
        self.requests = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._server: asyncio.base_events.Server | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        """Stop listening and drop every connection; each handler then ends on its own."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 5)
        if self._session is not None:
            await self._session.close()

    async def wait_released(self, timeout: float) -> None:
        """Until no answer is being written: each one finished, or its connection was closed."""
        await asyncio.wait_for(self.idle.wait(), timeout)

    # ------------------------------------------------------------ serving

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                self.requests += 1
                self.busy += 1
                self.idle.clear()
                try:
                    keep = await self._answer(writer, *request)
                finally:
                    self.busy -= 1
                    if not self.busy:
                        self.idle.set()
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, method: str, target: str, headers: dict[str, str], body: bytes) -> bool:
        """Write one damaged answer; whether the connection may serve another request."""
        assert self._session is not None
        forward = {k: v for k, v in headers.items() if k not in _HOP}
        async with self._session.request(method, self.inner_url + target, data=body, headers=forward) as resp:
            status, content_type, payload = resp.status, resp.headers.get("content-type", "application/json"), await resp.read()
        stream = content_type.startswith(("text/event-stream", "application/x-ndjson"))
        sse = content_type.startswith("text/event-stream")
        fault = self.fault
        extra: dict[str, str] = {}
        if fault == "error_200":
            status, content_type = 200, "application/json"  # the emulator was scripted to fail: keep its body
        elif fault == "invalid_json":
            payload = _insert_after_first(payload, sse, b"data: {not json\n\n" if sse else b"{not json\n") if stream else payload[: len(payload) // 2] + b"!!"
        elif fault == "no_terminator" and stream:
            payload = _without_terminator(payload, sse)
        elif fault in ("cut_mid_frame", "abort_mid_frame"):
            payload = payload[: _mid_frame(payload)]
        elif fault == "crlf":
            payload = payload.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        elif fault == "comments" and sse:
            payload = b": ping\n\n" + payload.replace(b"\n\n", b"\n\n: keep-alive\n\n")
        elif fault == "unknown_events" and sse:
            payload = _insert_after_first(payload, sse, b'event: mystery_event\ndata: {"type": "mystery_event", "unknown": [1, 2]}\n\n')
        elif fault == "gzip":
            payload, extra = gzip.compress(payload), {"content-encoding": "gzip"}
        elif fault == "brotli":
            try:
                import brotli
            except ImportError:  # cannot encode: the label alone, which a client without Brotli cannot decode either
                extra = {"content-encoding": "br"}
            else:
                payload, extra = brotli.compress(payload), {"content-encoding": "br"}
        head = (f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\ncontent-type: {content_type}\r\n"
                "transfer-encoding: chunked\r\n" + "".join(f"{k}: {v}\r\n" for k, v in extra.items()) + "\r\n").encode()
        if fault == "slow_drip_headers":
            await self._drip(writer, head + _chunk(payload) + b"0\r\n\r\n")
            return True
        writer.write(head)
        await writer.drain()
        if fault == "split_bytes":
            for i in range(len(payload)):
                writer.write(_chunk(payload[i : i + 1]))
                await writer.drain()
        elif fault == "slow_drip":
            for i in range(len(payload)):
                await self._drip(writer, _chunk(payload[i : i + 1]))
        elif fault == "never_ending" and stream:
            first, repeat = _first_content_frame(payload, sse, self.marker)
            writer.write(_chunk(first))
            for _ in range(_MAX_FOREVER):
                await asyncio.sleep(self.drip)  # the emulated model's pace, not a test wait
                writer.write(_chunk(repeat))
                await writer.drain()
            return False
        else:
            writer.write(_chunk(payload))
        if fault == "abort_mid_frame":
            await writer.drain()
            return False  # no last chunk: the connection just drops
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def _drip(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(self.drip)  # the emulated slow link, not a test wait


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return method, target, headers, body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


def _frames(payload: bytes, sse: bool) -> list[bytes]:
    """The frames of an SSE or NDJSON body, each with its own ending."""
    sep = b"\n\n" if sse else b"\n"
    return [part + sep for part in payload.split(sep) if part.strip()]


def _insert_after_first(payload: bytes, sse: bool, extra: bytes) -> bytes:
    frames = _frames(payload, sse)
    return b"".join(frames[:1] + [extra] + frames[1:])


def _without_terminator(payload: bytes, sse: bool) -> bytes:
    """Everything before the protocol's end marker; for Gemini (no marker) and NDJSON, all but the last frame."""
    for marker in TERMINATORS.values():
        at = payload.find(marker)
        if at >= 0:
            return payload[:at]
    return b"".join(_frames(payload, sse)[:-1])


def _mid_frame(payload: bytes) -> int:
    """A cut point inside a frame near the middle of the body (never on a line boundary)."""
    at = len(payload) // 2
    while at < len(payload) - 2 and payload[at - 1 : at + 1].strip(b"\r\n") != payload[at - 1 : at + 1]:
        at += 1
    return at


def _first_content_frame(payload: bytes, sse: bool, marker: bytes) -> tuple[bytes, bytes]:
    """The frames up to the first one carrying ``marker``, and that frame (to repeat)."""
    frames = _frames(payload, sse)
    for i, frame in enumerate(frames):
        if marker in frame:
            return b"".join(frames[: i + 1]), frame
    raise AssertionError(f"no frame carries {marker!r}")
