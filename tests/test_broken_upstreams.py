"""Broken upstreams, per upstream protocol: every fault in tests/emulators/broken.py.

The client always gets, within the configured timeouts, either the whole
answer or a clean error (an HTTP error in its shape, or the protocol's
mid-stream error frame) — never a truncated answer passed off as complete —
and ccproxyd lets go of the upstream connection. The stream decoders are also
fed each protocol's documented stream split at every byte.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ccproxyd import ir
from ccproxyd.config import Provider
from ccproxyd.protocols import ADAPTERS
from ccproxyd.protocols.base import UpstreamTarget
from tests.conftest import ACCESS_KEY, UPSTREAM_KEY, Upstream, emulator_class, proxy_config
from tests.emulators.base import Reply, ToolCallScript
from tests.emulators.broken import FAULTS, SSE_ONLY, BrokenUpstream
from tests.test_fuzz_inbound import SERVED, chat_request, check_error, read_answer

TEXT = "Quokkas smile a lot — ünïcödé ✓ 😀, split into pieces."
TIMEOUTS = {"connect": 2, "first_byte": 0.4, "idle": 0.4, "total": 0.8}
SLACK = 2.0  # seconds of scheduling leeway on a loaded machine
UPSTREAMS = [p for p in SERVED if emulator_class(p)]
HARMLESS = {"split_bytes", "crlf", "comments", "unknown_events", "gzip", "brotli"}  # the answer must arrive whole
BROKEN = {"invalid_json", "cut_mid_frame", "abort_mid_frame", "error_200"}  # a clean error, never an answer
STALLING = {"never_ending", "slow_drip", "slow_drip_headers"}  # a timeout, in time
HAVE_BROTLI = importlib.util.find_spec("brotli") is not None
STREAM_ONLY = SSE_ONLY | {"no_terminator", "never_ending"}
CASES = [(p, f, s) for p in UPSTREAMS for f in FAULTS for s in (False, True)
         if not (f in SSE_ONLY and p == "ollama") and not (f in STREAM_ONLY and not s)]


@pytest.fixture
async def broken_proxy(start_upstream, start_proxy):
    servers: list[BrokenUpstream] = []

    async def start(protocol: str, fault: str, reply: Reply) -> tuple[Any, BrokenUpstream]:
        upstream = await start_upstream(protocol)
        upstream.emulator.script(reply)
        server = BrokenUpstream(upstream.url, fault)
        servers.append(server)
        config = proxy_config([Upstream(protocol, None, await server.start())])
        config["providers"][protocol]["timeouts"] = TIMEOUTS
        return await start_proxy(config), server

    yield start
    for server in servers:
        await server.close()


@pytest.mark.parametrize("protocol,fault,stream", CASES, ids=[f"{p}-{f}-{'stream' if s else 'json'}" for p, f, s in CASES])
async def test_broken_upstream(broken_proxy, caplog, protocol, fault, stream):
    reply = Reply(error_status=500, error_message="quota exhausted for today") if fault == "error_200" else Reply(text=TEXT, chunks=4)
    proxy, upstream = await broken_proxy(protocol, fault, reply)
    path, body = chat_request("openai", f"m-{protocol}", "hi", stream)
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + path, json=body, headers={"authorization": f"Bearer {ACCESS_KEY}"}) as resp:
            status, raw = resp.status, await resp.read()
    elapsed = time.monotonic() - started
    answer = read_answer("openai", stream, raw) if status == 200 else None
    failed = status >= 400 or answer.error is not None
    if failed and status >= 400:
        message = check_error("openai", status, raw)
    elif failed:
        message = answer.error
    where = f"{fault} from {protocol}: {status} {raw[-300:]!r}"

    if fault == "brotli" and not HAVE_BROTLI:  # aiohttp decodes br only with the Brotli package: a clean 502 then
        assert status == 502 and "brotli" in message.lower(), where
    elif fault in HARMLESS:
        assert status == 200 and answer.error is None and answer.finished, where
        assert answer.text == TEXT, where
    elif fault in BROKEN:
        assert failed, where
        if fault == "error_200":  # the upstream's own message reaches the client, streamed or not
            assert "quota exhausted" in message, where
    elif fault == "no_terminator":  # complete but for its end marker: the whole answer, or an error
        assert failed or (answer.text == TEXT and answer.finished), where
    else:
        assert failed and status in (200, 504), where
        assert "timeout" in message.lower() or "within" in message or "stalled" in message or "did not" in message, where
        limit = TIMEOUTS["first_byte"] if fault == "slow_drip_headers" else TIMEOUTS["total"]
        assert elapsed >= limit * 0.9, f"{where}: ended after {elapsed:.2f}s, before the {limit}s timeout"
    assert elapsed < TIMEOUTS["total"] + SLACK, f"{where}: took {elapsed:.2f}s"
    await upstream.wait_released(SLACK)  # the upstream connection was closed or finished, none left hanging
    assert upstream.requests == 1, "a broken answer is not retried against the same broken upstream"
    assert not [r for r in caplog.records if r.exc_info or (r.levelno >= logging.ERROR and r.name.startswith("aiohttp"))]


# ---------------------------------------------------------------- decoders fed one byte at a time

RICH = Reply(text=TEXT, reasoning="Thinking — carefully ✓", tool_calls=[ToolCallScript("get_weather", {"city": "Zürich", "n": [1, 2]})], chunks=5)


async def _documented_stream(start_upstream, protocol: str) -> bytes:
    """The emulator's stream for a request encoded by ccproxyd's own outbound adapter."""
    upstream = await start_upstream(protocol)
    upstream.emulator.script(RICH)
    provider = Provider(protocol, protocol, upstream.base_url, api_keys=(UPSTREAM_KEY,))
    request = ir.Request(model="m", messages=[ir.Message("user", [ir.Text("weather?")])], stream=True, max_tokens=500,
                         tools=[ir.Tool("get_weather", "weather", {"type": "object", "properties": {"city": {"type": "string"}}})],
                         reasoning=ir.ReasoningConfig(enabled=True, budget_tokens=2048))
    call = ADAPTERS[protocol].encode_request(request, UpstreamTarget(provider, f"upstream-{protocol}-model", UPSTREAM_KEY, "req-1"))
    async with aiohttp.ClientSession() as session:
        async with session.post(call.url, json=call.body, headers=call.headers) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.read()


async def _decode(protocol: str, pieces: list[bytes]) -> list[Any]:
    async def chunks():
        for piece in pieces:
            yield piece

    events = []
    async for event in ADAPTERS[protocol].decode_stream(chunks()):
        if isinstance(event, ir.ToolCallStart):  # ids may be generated afresh on each decode
            event = ir.ToolCallStart("id", event.name, event.provider_metadata)
        events.append(event)
    return events


@pytest.mark.parametrize("protocol", UPSTREAMS)
async def test_stream_decoders_do_not_care_where_frames_are_split(start_upstream, protocol):
    raw = await _documented_stream(start_upstream, protocol)
    whole = await _decode(protocol, [raw])
    assert isinstance(whole[-1], ir.Finished) and not any(isinstance(e, ir.StreamError) for e in whole), whole[-3:]
    assert "".join(e.text for e in whole if isinstance(e, ir.TextDelta)) == TEXT
    assert await _decode(protocol, [raw[i : i + 1] for i in range(len(raw))]) == whole
    for cut in range(1, len(raw)):
        assert await _decode(protocol, [raw[:cut], raw[cut:]]) == whole, f"split at byte {cut}: {raw[cut - 20:cut + 20]!r}"


# ---------------------------------------------------------------- error codes that are no HTTP status


@pytest.mark.parametrize("code", [-5, 0, 150, 299, 1200, "abc", 10**30])
@pytest.mark.parametrize("protocol", [p for p in ("openai", "gemini") if p in UPSTREAMS])
async def test_upstream_error_codes_outside_http_are_clean_errors(aiohttp_server, start_proxy, caplog, protocol, code):
    """``{"error": {"code": ...}}`` in a 200: whatever the code, the client gets an HTTP error status in its shape."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": code, "message": "odd failure", "status": "INTERNAL", "type": "server_error"}})

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    server = await aiohttp_server(app)
    proxy = await start_proxy(proxy_config([Upstream(protocol, None, str(server.make_url("")).rstrip("/"))]))
    for client in SERVED:
        path, body = chat_request(client, f"m-{protocol}")
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + path, json=body, headers={"authorization": f"Bearer {ACCESS_KEY}"}) as resp:
                check_error(client, resp.status, await resp.read())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
