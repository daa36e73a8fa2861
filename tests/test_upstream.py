"""The upstream call itself (``UpstreamClient``): the four timeouts and their messages, which failure is
``ConnectFailed``, reading a body whole, when the connection goes back to the pool, and no cookie jar.

The upstream is a scripted HTTP/1.1 server on a raw socket, so a test decides exactly which bytes
arrive and when: the headers without a body, half a body, a body sent slowly.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest

from ccproxyd.config import Provider, Timeouts
from ccproxyd.errors import BadGateway, UpstreamTimeout
from ccproxyd.observe import TappedUpstream
from ccproxyd.protocols.base import UpstreamCall
from ccproxyd.upstream import ConnectFailed, UpstreamClient
from tests.emulators.faults import UnacceptingListener, refused_url

BODY = b'{"answer": "' + b"x" * 2000 + b'"}'
HOLD = "hold"  # in a script: send nothing more until the test ends
CLOSE = "close"  # in a script: close the connection


def head(length: int | None = len(BODY), *extra: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", "Content-Type: application/json", *extra]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Request:
    head: str
    body: bytes
    peer: int  # the caller's port: the same port for two requests is one kept-alive connection


@dataclass
class ScriptedUpstream:
    """Answers each request with the next script: bytes to send (each its own write), ``HOLD`` to stall,
    ``CLOSE`` to close the connection, a float to wait that many seconds between writes. Without a
    script: ``head() + BODY``. The connection stays open for the next request after a script."""

    scripts: list[list[bytes | str | float]] = field(default_factory=list)
    received: list[Request] = field(default_factory=list)
    hold: asyncio.Event = field(default_factory=asyncio.Event)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[1]
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                text = raw.decode("latin-1")
                length = next((int(line.split(":", 1)[1]) for line in text.split("\r\n")
                               if line.lower().startswith("content-length:")), 0)
                self.received.append(Request(text, await reader.readexactly(length), peer))
                for step in self.scripts.pop(0) if self.scripts else [head() + BODY]:
                    if step == HOLD:
                        await self.hold.wait()
                    if step in (HOLD, CLOSE):
                        return
                    if isinstance(step, float):
                        await asyncio.sleep(step)
                    else:
                        writer.write(step)
                        await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()


@pytest.fixture
async def upstream():
    scripted = ScriptedUpstream()
    scripted.server = await asyncio.start_server(scripted.serve, "127.0.0.1", 0)
    yield scripted
    scripted.hold.set()
    scripted.server.close()
    await scripted.server.wait_closed()


@pytest.fixture
async def client():
    upstream_client = UpstreamClient()
    yield upstream_client
    await upstream_client.close()


def provider(url: str, **timeouts: float) -> Provider:
    return Provider("p", "openai", url, timeouts=Timeouts(**{"connect": 5, "first_byte": 5, "idle": 5, "total": 0, **timeouts}))


def call(url: str) -> UpstreamCall:
    return UpstreamCall(f"{url}/chat/completions", {"content-type": "application/json", "authorization": "Bearer k"},
                        {"model": "m", "messages": []}, False)


async def read_whole(client: UpstreamClient, p: Provider, limit: int = 1 << 20) -> bytes:
    resp = await client.open(call(p.base_url), p)
    try:
        return await resp.read_all(limit)
    finally:
        resp.close()


async def read_chunks(client: UpstreamClient, p: Provider) -> bytes:
    resp = await client.open(call(p.base_url), p)
    try:
        return b"".join([chunk async for chunk in resp.chunks])
    finally:
        resp.close()


READERS = {"read_all": read_whole, "chunks": read_chunks}


# ---------------------------------------------------------------- the four timeouts, word for word


async def test_no_response_headers_within_first_byte(upstream, client):
    upstream.scripts.append([HOLD])
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as e:
        await client.open(call(upstream.url), provider(upstream.url, first_byte=0.2))
    assert str(e.value) == "p sent no response headers within 0.2s"
    assert 0.2 <= time.monotonic() - started < 2


async def test_total_before_the_response_headers(upstream, client):
    upstream.scripts.append([HOLD])
    with pytest.raises(UpstreamTimeout) as e:
        await client.open(call(upstream.url), provider(upstream.url, first_byte=5, total=0.2))
    assert str(e.value) == "p did not finish within 0.2s"


@pytest.mark.parametrize("read", READERS.values(), ids=READERS.keys())
async def test_headers_but_no_body_within_first_byte(upstream, client, read):
    upstream.scripts.append([head(), HOLD])
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as e:
        await read(client, provider(upstream.url, first_byte=0.3, idle=0.05))
    assert str(e.value) == "p sent no data within 0.3s"  # the first byte's limit, not idle's
    assert 0.3 <= time.monotonic() - started < 2


@pytest.mark.parametrize("read", READERS.values(), ids=READERS.keys())
async def test_first_byte_counts_from_sending_not_from_the_headers(upstream, client, read):
    upstream.scripts.append([0.2, head(), HOLD])
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="sent no data within 0.3s"):
        await read(client, provider(upstream.url, first_byte=0.3))
    assert 0.3 <= time.monotonic() - started < 0.3 + 0.15  # not 0.2 + 0.3


@pytest.mark.parametrize("read", READERS.values(), ids=READERS.keys())
async def test_a_stall_after_the_first_bytes_is_idle(upstream, client, read):
    upstream.scripts.append([head() + BODY[:10], HOLD])
    with pytest.raises(UpstreamTimeout) as e:
        await read(client, provider(upstream.url, first_byte=5, idle=0.2))
    assert str(e.value) == "p stalled mid-stream for 0.2s"


@pytest.mark.parametrize("read", READERS.values(), ids=READERS.keys())
async def test_total_while_the_body_drips(upstream, client, read):
    upstream.scripts.append([head(), *[step for byte in BODY[:40] for step in (bytes([byte]), 0.02)], HOLD])
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as e:
        await read(client, provider(upstream.url, idle=0.5, total=0.3))
    assert str(e.value) == "p did not finish within 0.3s"
    assert 0.3 <= time.monotonic() - started < 2


async def test_connect_timeout(client):
    listener = UnacceptingListener()
    try:
        with pytest.raises(UpstreamTimeout) as e:
            await client.open(call(listener.base_url), provider(listener.base_url, connect=0.2))
    finally:
        listener.close()
    assert str(e.value) == "p: connecting took longer than 0.2s"


async def test_a_timeout_of_another_caller_is_not_ours(upstream, client):
    upstream.scripts.append([HOLD])
    with pytest.raises(TimeoutError):  # asyncio's own, passed on untouched
        async with asyncio.timeout(0.1):
            await client.open(call(upstream.url), provider(upstream.url, first_byte=5))


# ---------------------------------------------------------------- failures


async def test_refused_is_connect_failed(client):
    url = refused_url()
    with pytest.raises(ConnectFailed, match=r"^p is unreachable \("):
        await client.open(call(url), provider(url))


@pytest.mark.parametrize("read", READERS.values(), ids=READERS.keys())
async def test_a_body_cut_short_is_bad_gateway_not_connect_failed(upstream, client, read):
    upstream.scripts.append([head() + BODY[:100], CLOSE])
    with pytest.raises(BadGateway) as e:
        await read(client, provider(upstream.url))
    assert not isinstance(e.value, ConnectFailed)
    assert str(e.value).startswith("p broke off the response: ")


async def test_garbage_instead_of_http_is_bad_gateway(upstream, client):
    upstream.scripts.append([b"SSH-2.0-OpenSSH_9.6\r\n\r\n"])
    with pytest.raises(BadGateway) as e:
        await client.open(call(upstream.url), provider(upstream.url))
    assert not isinstance(e.value, ConnectFailed) and str(e.value).startswith("p: ")


# ---------------------------------------------------------------- reading whole, and the pool


@pytest.mark.parametrize("read", READERS.values(), ids=READERS.keys())
async def test_a_body_read_to_its_end_returns_the_connection_to_the_pool(upstream, client, read):
    upstream.scripts.append([head(), BODY[:500], BODY[500:]])
    assert await read(client, provider(upstream.url)) == BODY
    assert await read(client, provider(upstream.url)) == BODY
    assert upstream.received[0].peer == upstream.received[1].peer


async def test_a_chunked_body_is_read_whole(upstream, client):
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (BODY[:7], BODY[7:1000], BODY[1000:])) + b"0\r\n\r\n"
    upstream.scripts.append([head(None, "Transfer-Encoding: chunked"), chunked[:50], chunked[50:]])
    assert await read_whole(client, provider(upstream.url)) == BODY


async def test_past_the_limit_is_bad_gateway_and_the_connection_is_dropped(upstream, client):
    upstream.scripts.append([head(), BODY[:1000], HOLD])
    with pytest.raises(BadGateway, match="^upstream response is larger than 500 bytes$"):
        await read_whole(client, provider(upstream.url), limit=500)
    assert await read_whole(client, provider(upstream.url)) == BODY
    assert upstream.received[0].peer != upstream.received[1].peer


async def test_a_body_abandoned_half_read_drops_the_connection(upstream, client):
    upstream.scripts.append([head(), BODY[:1000], HOLD])
    p = provider(upstream.url)
    resp = await client.open(call(upstream.url), p)
    chunks = resp.chunks.__aiter__()
    assert BODY.startswith(await chunks.__anext__())
    await chunks.aclose()
    resp.close()
    assert await read_whole(client, p) == BODY
    assert upstream.received[0].peer != upstream.received[1].peer


async def test_before_read_is_awaited_before_each_read_of_a_stream(upstream, client):
    upstream.scripts.append([head(), BODY[:500], 0.05, BODY[500:]])
    resp = await client.open(call(upstream.url), provider(upstream.url))
    flushed = []

    async def flush() -> None:
        flushed.append(len(got))

    got: list[bytes] = []
    resp.before_read = flush
    async for chunk in resp.chunks:
        got.append(chunk)
    assert b"".join(got) == BODY and flushed == list(range(len(got) + 1))


async def test_read_all_reads_through_a_wrapped_body(upstream, client):
    upstream.scripts.append([head(), BODY])
    resp = await client.open(call(upstream.url), provider(upstream.url))
    seen = []

    async def wrapped(chunks):
        async for chunk in chunks:
            seen.append(chunk)
            yield chunk.upper()

    resp.chunks = wrapped(resp.chunks)
    assert await resp.read_all(1 << 20) == BODY.upper() and b"".join(seen) == BODY


async def test_the_body_log_sees_a_body_read_whole(upstream):
    class Bodies:
        entries: list[dict] = []

        def write(self, entry: dict) -> None:
            self.entries.append(entry)

    bodies = Bodies()
    tapped = TappedUpstream(lambda: bodies)  # type: ignore[arg-type, return-value]
    try:
        assert await read_whole(tapped, provider(upstream.url)) == BODY
    finally:
        await tapped.close()
    assert [e["direction"] for e in bodies.entries] == ["upstream_request", "upstream_response"]
    assert bodies.entries[1]["body"] == {"answer": "x" * 2000} and bodies.entries[1]["status"] == 200


# ---------------------------------------------------------------- no cookie jar


async def test_an_upstream_cookie_is_not_sent_back(upstream, client):
    # by name: aiohttp's default jar keeps no cookie of an IP address; "localhost" is 127.0.0.1 too
    url = upstream.url.replace("127.0.0.1", "localhost")
    upstream.scripts.append([head(len(BODY), "Set-Cookie: session=from-upstream; Path=/") + BODY])
    p = provider(url)
    assert await read_whole(client, p) == BODY
    assert await read_whole(client, p) == BODY
    assert len(upstream.received) == 2
    assert "cookie:" not in upstream.received[1].head.lower()


def test_a_client_closed_in_one_event_loop_times_out_calls_in_the_next() -> None:
    """The client keeps its session's loop for the calls' timers: a closed client must not keep it."""

    async def silent_upstream_call(client: UpstreamClient) -> str:
        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(65536)
            await asyncio.sleep(30)

        server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        try:
            await client.open(call(url), provider(url, first_byte=0.2))
        except UpstreamTimeout as e:
            return str(e)
        finally:
            await client.close()
            server.close()
        return "answered"

    client = UpstreamClient()
    assert "sent no response headers within 0.2s" in asyncio.run(silent_upstream_call(client))
    assert "sent no response headers within 0.2s" in asyncio.run(silent_upstream_call(client))
