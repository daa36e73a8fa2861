"""Idle, slow and excess client connections against the real process (connections.py).

The slow clients trickle bytes on purpose (that pacing is what they are); every
check waits on the server closing the socket, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from tests.conftest import ACCESS_KEY, proxy_config
from tests.procs import AUTH, closed_within, daemon, metric  # noqa: F401 (daemon is a fixture)

LIMITS = {"keepalive_timeout": 1.5, "request_header_timeout": 1, "request_body_timeout": 1}


async def _trickle(writer: asyncio.StreamWriter, pieces: list[bytes], every: float) -> None:
    """A slow client: one piece every ``every`` seconds until the server hangs up."""
    for piece in pieces:
        try:
            writer.write(piece)
            await writer.drain()
        except (ConnectionError, RuntimeError):
            return
        await asyncio.sleep(every)  # the client's pace, not a wait for the server


async def _models(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url + "/v1/models", headers=AUTH) as resp:
        await resp.read()
        return resp.status


async def test_slow_head_slow_body_and_idle_connections_are_closed_at_their_timeouts(start_upstream, daemon):
    upstream = await start_upstream("openai")
    proc = daemon(proxy_config([upstream], server=LIMITS))
    port = proc.port
    head_reader, head_writer = await asyncio.open_connection("127.0.0.1", port)
    body_reader, body_writer = await asyncio.open_connection("127.0.0.1", port)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    head_lines = [b"POST /v1/chat/completions HTTP/1.1\r\n"] + [f"x-slow-{i}: {i}\r\n".encode() for i in range(40)]
    body = orjson.dumps({"model": "m-openai", "messages": [{"role": "user", "content": "hi"}]})
    body_head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACCESS_KEY}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    started = time.monotonic()  # the idle connection is open, the slow ones send their first bytes now
    trickles = [asyncio.create_task(_trickle(head_writer, head_lines, 0.2)),
                asyncio.create_task(_trickle(body_writer, [body_head] + [body[i:i + 1] for i in range(len(body))], 0.2))]
    async with aiohttp.ClientSession() as http:
        assert await _models(http, proc.url) == 200  # a normal client is served meanwhile
        (head_answer, head_after), (body_answer, body_after), (idle_answer, idle_after) = await asyncio.gather(
            closed_within(head_reader, 10, started), closed_within(body_reader, 10, started), closed_within(idle_reader, 10, started))
        assert await _models(http, proc.url) == 200
        async with http.get(proc.url + "/metrics", headers=AUTH) as resp:
            metrics = await resp.text()
    for task in trickles:
        await task
    for writer in (head_writer, body_writer, idle_writer):
        writer.close()

    assert head_answer.startswith(b"HTTP/1.1 408"), head_answer
    assert 0.9 <= head_after < 4, head_after
    status_line, _, rest = body_answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 408"), body_answer
    error = orjson.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    assert "request body not received within 1s" in error["message"], error  # in the client's protocol shape
    assert 0.9 <= body_after < 4, body_after
    assert idle_answer == b"" and 1.4 <= idle_after < 5, (idle_answer, idle_after)
    for reason in ("header_timeout", "body_timeout", "idle"):
        assert metric(metrics, f'ccproxyd_connections_closed_total{{reason="{reason}"}}') >= 1, (reason, metrics)
    log = proc.log()
    assert "request head not received within 1s (server.request_header_timeout)" in log
    assert "request body not received within 1s (server.request_body_timeout)" in log
    assert "closed a client connection from 127.0.0.1: idle for 1.5s (server.keepalive_timeout)" in log
    assert "Traceback" not in log


async def test_a_keep_alive_connection_is_closed_once_idle_but_not_while_a_long_stream_is_answered(start_upstream, daemon):
    from tests.emulators.base import Reply

    upstream = await start_upstream("openai")
    upstream.emulator.script(Reply(text="abcdefghij", chunks=10, chunk_delay=0.4))  # 4 s, longer than every client timeout
    proc = daemon(proxy_config([upstream], server=LIMITS))
    reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
    body = orjson.dumps({"model": "m-openai", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    writer.write((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACCESS_KEY}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
    started = time.monotonic()
    data, _ = await closed_within(reader, 15)
    writer.close()
    assert b"data: [DONE]" in data, data[-300:]  # the whole stream, then closed once idle
    assert time.monotonic() - started >= 4 + 1.4


async def test_max_connections_refuses_the_excess_and_serves_again_once_they_close(start_upstream, daemon):
    upstream = await start_upstream("openai")
    nofile = 256
    proc = daemon(proxy_config([upstream], server={"keepalive_timeout": 60, "request_header_timeout": 60}), nofile=nofile)
    allowed = (nofile - 64) // 2  # the default: half of what the file limit leaves after 64 for the daemon's own files
    held = []
    for _ in range(allowed):
        held.append(await asyncio.open_connection("127.0.0.1", proc.port))
    extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", proc.port)
    refused, after = await closed_within(extra_reader, 5)
    extra_writer.close()
    assert refused.startswith(b"HTTP/1.1 503") and b"too many open connections" in refused, refused
    assert after < 2
    async with aiohttp.ClientSession() as http:
        async with http.get(proc.url + "/v1/models", headers=AUTH) as resp:
            assert resp.status == 503  # a normal client too, at once, while all are taken
        for _, writer in held[:10]:
            writer.close()
        status, deadline = 503, time.monotonic() + 10
        while status != 200 and time.monotonic() < deadline:  # until the daemon has seen them close
            async with aiohttp.ClientSession() as fresh:
                status = await _models(fresh, proc.url)
        assert status == 200
        async with http.get(proc.url + "/metrics", headers=AUTH) as resp:
            metrics = await resp.text()
    for _, writer in held[10:]:
        writer.close()
    assert metric(metrics, 'ccproxyd_connections_closed_total{reason="max_connections"}') >= 2
    log = proc.log()
    assert log.count(f"{allowed} connections are open (server.max_connections); refused") == 1, log[-2000:]  # rate-limited


async def test_a_configured_max_connections_is_honoured_and_one_beyond_the_file_limit_is_warned_about(start_upstream, daemon):
    upstream = await start_upstream("openai")
    proc = daemon(proxy_config([upstream], server={"max_connections": 2}))
    held = [await asyncio.open_connection("127.0.0.1", proc.port) for _ in range(2)]
    reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
    refused, _ = await closed_within(reader, 5)
    writer.close()
    for _, w in held:
        w.close()
    assert refused.startswith(b"HTTP/1.1 503"), refused
    assert "accepts up to 2 client connections" in proc.log()

    too_many = daemon(proxy_config([upstream], server={"max_connections": 1000}), nofile=256)
    await too_many.wait_log("server.max_connections is 1000, more than the file limit (ulimit -n, LimitNOFILE) leaves room for (96)")


@pytest.mark.parametrize("key,value,message", [
    ("keepalive_timeout", 0, "must be at least 1"),
    ("request_header_timeout", -1, "must be at least 0"),
    ("request_body_timeout", "60s", "expected an integer or a number"),
    ("max_connections", -5, "must be at least 0"),
    ("image_fetch_max_total_bytes", 0, "must be at least 1"),
    ("image_fetch_concurrency", 0, "must be at least 1"),
])
def test_bad_limits_are_config_errors(tmp_path, key, value, message):
    import subprocess
    import sys

    import tomli_w

    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps({"server": {key: value}}))
    done = subprocess.run([sys.executable, "-m", "ccproxyd", "--config", str(path), "check"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert f"{path}: server.{key}: {message}" in done.stderr, done.stderr
