"""The daemon's server answers exactly as aiohttp's router path does, byte for byte.

The daemon runs the app on :class:`~ccproxyd.connections.GuardedRunner`, whose server hands each
request straight to ``serve()`` (:func:`~ccproxyd.server.direct_handling`); a plain ``AppRunner``
takes it through aiohttp's router and its ``on_response_prepare`` signal. One config, two servers,
the same raw requests sent to both: the bytes that come back must be the same, apart from what
changes with every answer (the date, the measured overhead, generated answer ids and times).
"""

from __future__ import annotations

import asyncio
import re
import orjson
import pytest
from aiohttp.test_utils import TestServer

from ccproxyd.config import parse_config
from ccproxyd.connections import GuardedRunner
from ccproxyd.server import create_app
from tests.conftest import ACCESS_KEY, DaemonTestServer, proxy_config

ORIGIN = "http://localhost:3000"
CHAT = orjson.dumps({"model": "m-openai", "messages": [{"role": "user", "content": "hi"}]})
STREAM = orjson.dumps({"model": "m-openai", "messages": [{"role": "user", "content": "hi"}], "stream": True})
CLAUDE = orjson.dumps({"model": "m-openai", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]})


def request(method: str, path: str, body: bytes = b"", *, key: bool = True, version: str = "1.1", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1", "x-request-id: req-1"]
    if key:
        lines.append(f"Authorization: Bearer {ACCESS_KEY}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# Each case: the bytes sent on one connection (several requests are pipelined), the server closing it after the last.
CASES: dict[str, bytes] = {
    "models": request("GET", "/v1/models", Connection="close"),
    "chat": request("POST", "/v1/chat/completions", CHAT, Content_Type="application/json", Connection="close"),
    "claude to openai": request("POST", "/v1/messages", CLAUDE, Content_Type="application/json", Connection="close"),
    "stream": request("POST", "/v1/chat/completions", STREAM, Content_Type="application/json", Connection="close"),
    "keep-alive, pipelined": request("GET", "/v1/models") + request("POST", "/v1/chat/completions", CHAT)
    + request("GET", "/nope", Connection="close"),
    "http/1.0": request("GET", "/v1/models", version="1.0"),
    "unknown path": request("GET", "/nope/../x%2Fy", Connection="close"),
    "double slashes": request("GET", "//v1//models", Connection="close"),
    "absolute form": request("GET", "http://127.0.0.1/v1/models", Connection="close"),
    "method not allowed": request("DELETE", "/v1/chat/completions", Connection="close"),
    "missing key": request("POST", "/v1/chat/completions", CHAT, key=False, Connection="close"),
    "bad json": request("POST", "/v1/chat/completions", b"{nope", Connection="close"),
    "head": request("HEAD", "/v1/models", Connection="close"),
    "cors preflight": request("OPTIONS", "/v1/chat/completions", key=False, Origin=ORIGIN, Access_Control_Request_Method="POST",
                              Access_Control_Request_Headers="authorization, content-type", Connection="close"),
    "cors request": request("POST", "/v1/chat/completions", CHAT, Origin=ORIGIN, Connection="close"),
    "cors, other origin": request("POST", "/v1/chat/completions", CHAT, Origin="http://evil.example", Connection="close"),
    "options *": request("OPTIONS", "*", Connection="close"),
    "expect 100-continue": request("POST", "/v1/chat/completions", CHAT, Expect="100-continue", Connection="close"),
    "expect, unknown": request("POST", "/v1/chat/completions", CHAT, Expect="something", Connection="close"),
    "expect, empty": request("POST", "/v1/chat/completions", CHAT, Expect="", Connection="close"),
    "malformed head": b"GET /v1/models HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n",
    "malformed head, cors": b"GET /v1/models HTTP/1.1\r\nOrigin: http://localhost:3000\r\nHost 127.0.0.1\r\n\r\n",
    "head too large, cors": b"GET /v1/models HTTP/1.1\r\nOrigin: http://localhost:3000\r\nX-Big: " + b"x" * 9000 + b"\r\n\r\n",
    "root": request("GET", "/", key=False, Connection="close"),
}

_VARYING = [
    (re.compile(rb"\r\nDate: [^\r]+"), b"\r\nDate: -"),
    (re.compile(rb"\r\nx-ccproxy-overhead-ms: [0-9.]+"), b"\r\nx-ccproxy-overhead-ms: -"),
    (re.compile(rb'"(id|created|created_at)": ?("[^"]*"|[0-9]+)'), rb'"\1":-'),
]


def comparable(raw: bytes) -> bytes:
    for pattern, replacement in _VARYING:
        raw = pattern.sub(replacement, raw)
    return raw


async def exchange(port: int, sent: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(sent)
        return await asyncio.wait_for(reader.read(), 10)  # to the server's close
    finally:
        writer.close()


@pytest.fixture
async def servers(start_upstream):
    upstream = await start_upstream("openai")
    config = proxy_config([upstream], server={"cors_origins": [ORIGIN]})
    started = []
    for server_class in (TestServer, DaemonTestServer):
        server = server_class(create_app(parse_config(config, "<test config>", env={})))
        await server.start_server()
        started.append(server)
    yield started
    for server in started:
        await server.close()


async def test_the_daemons_server_answers_as_the_router_does(servers):
    routed, direct = servers
    assert isinstance(direct.runner, GuardedRunner) and not isinstance(routed.runner, GuardedRunner)
    for name, sent in CASES.items():
        expected = await exchange(routed.port, sent)
        got = await exchange(direct.port, sent)
        assert expected.startswith(b"HTTP/1."), name
        assert comparable(got) == comparable(expected), name


async def test_the_comparison_sees_headers_and_bodies(servers):
    """The masks hide only what varies: a changed header or body shows."""
    routed, _ = servers
    raw = await exchange(routed.port, CASES["chat"])
    assert b"\r\nx-request-id: req-1\r\n" in raw and b"\r\nDate: " in raw
    assert comparable(raw) != comparable(raw.replace(b"x-request-id: req-1", b"x-request-id: req-2"))
    assert comparable(raw) != comparable(raw.replace(b"Hello", b"Hallo"))
