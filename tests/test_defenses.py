"""The daemon defends itself (issue 19), against the real process: quiet cancellations counted as 499,
bounded image memory, shutdown within the grace with an error event on every stream, group-limited
views of /metrics and /healthz, the lockout exemption, and 502 for an unreadable upstream body."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import sqlite3
import time
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import ACCESS_KEY, PROTOCOLS, UPSTREAM_KEY, proxy_config
from tests.emulators.base import Reply
from tests.procs import AUTH, daemon, metric  # noqa: F401 (daemon is a fixture)
from tests.test_fuzz_inbound import chat_request, check_error, read_answer

# ---------------------------------------------------------------- a client gone mid-stream


async def _hang_up_mid_stream(port: int, reset: bool) -> None:
    """Start a stream, read its first frame, then hang up: a reset (RST), or a plain close (FIN) that the
    daemon notices only when a write fails."""
    body = orjson.dumps({"model": "m-openai", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACCESS_KEY}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
    seen = b""
    async with asyncio.timeout(15):
        while b"data: " not in seen:
            chunk = await reader.read(4096)
            assert chunk, f"the stream ended before its first frame: {seen!r}"
            seen += chunk
    if reset:
        writer.transport.abort()  # type: ignore[attr-defined]
    else:
        writer.close()


def _sum_status(metrics: str, status: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("ccproxyd_requests_total{") and f'status="{status}"' in line)


async def test_200_streams_cancelled_mid_way_are_quiet_and_counted_as_499(start_upstream, daemon, tmp_path):
    upstream = await start_upstream("openai")
    upstream.emulator.script(Reply(text="x" * 2000, chunks=2000, chunk_delay=0.001))  # frames as fast as they come, for 2 s or more
    state_dir = tmp_path / "state"
    proc = daemon(proxy_config([upstream], server={"stats": True, "state_dir": str(state_dir)}))
    slots = asyncio.Semaphore(20)

    async def one(n: int) -> None:
        async with slots:
            await _hang_up_mid_stream(proc.port, reset=n % 2 == 0)

    await asyncio.gather(*(one(n) for n in range(200)))
    cancelled, deadline = 0.0, time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while cancelled < 200 and time.monotonic() < deadline:  # until the daemon has finished all 200
            async with http.get(proc.url + "/metrics", headers=AUTH) as resp:
                metrics = await resp.text()
            cancelled = _sum_status(metrics, "499")
    assert cancelled == 200, metrics
    assert _sum_status(metrics, "200") == 0
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.exit_code(15) == 0
    log = proc.log()
    assert "Traceback" not in log and "Error handling request" not in log and "ERROR" not in log, log[-3000:]
    lines = [line for line in log.splitlines() if " chat " in line and "status=499" in line]
    assert len(lines) == 200 and all(line.endswith("cancelled") for line in lines), lines[:3]
    with sqlite3.connect(state_dir / "stats.sqlite3") as db:
        assert db.execute("SELECT status, cancelled, COUNT(*) FROM requests GROUP BY 1, 2").fetchall() == [(499, 1, 200)]


# ---------------------------------------------------------------- images


MIB = 1024 * 1024


@pytest.fixture
async def image_host(aiohttp_server):
    """Images of a given size; ``/chunked/`` ones without Content-Length. Counts requests and the most served at once."""
    seen: dict[str, Any] = {"requests": [], "active": 0, "most": 0}

    async def image(request: web.Request) -> web.StreamResponse:
        seen["requests"].append(request.path)
        seen["active"] += 1
        seen["most"] = max(seen["most"], seen["active"])
        try:
            size = int(request.match_info["size"])
            pattern = os.urandom(4099)
            data = (pattern * (size // len(pattern) + 1))[:size]
            if request.match_info["kind"] == "slow":
                await asyncio.sleep(0.3)  # a slow image host, so downloads overlap
            resp = web.StreamResponse(headers={"Content-Type": "image/png"})
            if request.match_info["kind"] == "sized":
                resp.content_length = size
            await resp.prepare(request)
            for i in range(0, size, 65536):
                await resp.write(data[i:i + 65536])
            await resp.write_eof()
            return resp
        finally:
            seen["active"] -= 1

    app = web.Application()
    app.router.add_get("/{kind}/{size}/{name}", image)
    server = await aiohttp_server(app)
    seen["url"] = str(server.make_url("")).rstrip("/")
    return seen


def _image_request(urls: list[str]) -> dict:
    parts: list[dict] = [{"type": "text", "text": "what are these?"}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return {"model": "m-gemini", "messages": [{"role": "user", "content": parts}]}


@pytest.mark.parametrize("kind", ["chunked", "sized"])
async def test_images_over_the_request_budget_are_refused_before_it_is_fetched_and_memory_stays_bounded(start_upstream, daemon, image_host, kind):
    upstream = await start_upstream("gemini")
    proc = daemon(proxy_config([upstream], server={"image_fetch_allow_private": True, "image_fetch_max_total_bytes": 10 * MIB}))
    base = image_host["url"]
    async with aiohttp.ClientSession() as http:
        async with http.post(proc.url + "/v1/chat/completions", json=_image_request([f"{base}/{kind}/1000/warm.png"]), headers=AUTH) as resp:
            assert resp.status == 200, await resp.text()  # within the budget: served (and the daemon warmed up)
        before = proc.rss_kib()
        for attempt in range(5):
            image_host["requests"].clear()
            urls = [f"{base}/{kind}/{8 * MIB}/{attempt}-{i}.png" for i in range(6)]  # 48 MiB named, 10 MiB allowed
            async with http.post(proc.url + "/v1/chat/completions", json=_image_request(urls), headers=AUTH) as resp:
                status, raw = resp.status, await resp.read()
            assert status == 413, raw
            assert "server.image_fetch_max_total_bytes" in check_error("openai", status, raw)
            assert len(image_host["requests"]) == 2, image_host["requests"]  # the first whole, the second cut (or refused by its size)
        grown = proc.rss_kib() - before
    assert grown < 32 * 1024, f"RSS grew by {grown} KiB"  # one request's budget, encoded (and once more as text), not 5 × 48 MiB


async def test_fetched_images_arrive_whole_and_downloads_are_capped_across_the_process(start_upstream, daemon, image_host):
    upstream = await start_upstream("gemini")
    proc = daemon(proxy_config([upstream], server={"image_fetch_allow_private": True, "image_fetch_concurrency": 2}))
    base = image_host["url"]
    size = 200_003  # not a multiple of 3 or of the chunk size: the incremental base64 must still be exact
    async with aiohttp.ClientSession() as http:
        async def ask(n: int) -> int:
            body = _image_request([f"{base}/slow/{size}/{n}-a.png", f"{base}/slow/{size}/{n}-b.png"])
            async with http.post(proc.url + "/v1/chat/completions", json=body, headers=AUTH) as resp:
                await resp.read()
                return resp.status

        assert await asyncio.gather(*(ask(n) for n in range(3))) == [200, 200, 200]
    assert len(image_host["requests"]) == 6
    assert image_host["most"] == 2, image_host["most"]  # 3 requests at once, never more than 2 downloads
    inline = [p["inlineData"] for r in upstream.emulator.received for c in r.body["contents"] for p in c["parts"] if "inlineData" in p]
    assert len(inline) == 6
    for item in inline:
        raw = base64.b64decode(item["data"], validate=True)
        assert len(raw) == size and item["mimeType"] == "image/png"


# ---------------------------------------------------------------- SIGTERM


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_ends_streams_longer_than_the_grace_with_an_error_event_in_every_protocol(start_upstream, daemon, workers):
    upstream = await start_upstream("openai")
    long_stream = Reply(text="x" * 60, chunks=60, chunk_delay=0.25)  # 15 s, far beyond the grace
    upstream.emulator.script(*[long_stream] * len(PROTOCOLS), Reply(headers_delay=15))  # then an answer that never starts
    grace = 1.0
    proc = daemon(proxy_config([upstream], server={"shutdown_grace": grace, "workers": workers}))
    if workers > 1:
        await proc.wait_log("all 2 workers are ready")
    async with aiohttp.ClientSession() as http:
        streams = {}
        for protocol in PROTOCOLS:
            path, body = chat_request(protocol, "m-openai", stream=True)
            resp = await http.post(proc.url + path, json=body, headers={**AUTH, "x-goog-api-key": ACCESS_KEY})
            assert resp.status == 200, await resp.text()
            streams[protocol] = (resp, await resp.content.readany())
        upstream.emulator.request_started.clear()
        path, body = chat_request("claude", "m-openai")
        waiting = asyncio.create_task(http.post(proc.url + path, json=body, headers=AUTH))
        await asyncio.wait_for(upstream.emulator.request_started.wait(), 10)
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        answers = {}
        for protocol, (resp, first) in streams.items():
            answers[protocol] = read_answer(protocol, True, first + await resp.read())
        unanswered = await waiting
        assert unanswered.status == 503
        assert "server shutting down" in check_error("claude", 503, await unanswered.read())
    code = await proc.exit_code(grace + 5)
    took = time.monotonic() - started
    assert code == 0
    assert took < grace + 2, f"exited {took:.2f}s after SIGTERM"
    for protocol, answer in answers.items():
        assert answer.error is not None and "server shutting down" in answer.error, (protocol, answer)
        assert 0 < len(answer.text) < 60, (protocol, answer)
    cut = re.findall(r"(\d+) request\(s\) still running after the 1s grace", proc.log())
    assert sum(map(int, cut)) == 5, proc.log()[-2000:]


# ---------------------------------------------------------------- a key limited to one group


async def test_a_group_limited_key_sees_only_its_groups_in_metrics_and_deep_health(start_upstream, daemon):
    mine, theirs = await start_upstream("openai"), await start_upstream("openai")
    theirs.emulator.script(Reply(error_status=429, error_message="slow down"))
    config = {
        "server": {"stats": False, "metrics_public": False},
        "keys": [{"name": "all", "key": ACCESS_KEY}, {"name": "team-a", "key": "sk-team-a-key-000000001", "groups": ["a"]}],
        "providers": {
            "pa": {"protocol": "openai", "base_url": mine.base_url, "api_keys": [UPSTREAM_KEY]},
            "pb": {"protocol": "openai", "base_url": theirs.base_url, "api_keys": [UPSTREAM_KEY]},
        },
        "groups": {"default": {"models": {"m-a": ["pa/model-a"]}}, "a": {"models": {"m-a": ["pa/model-a"]}},
                   "b": {"models": {"m-b": ["pb/model-b"]}}},
    }
    proc = daemon(config)
    limited = {"Authorization": "Bearer sk-team-a-key-000000001"}
    async with aiohttp.ClientSession() as http:
        for model in ("a@m-a", "b@m-b"):
            async with http.post(proc.url + "/v1/chat/completions", headers=AUTH,
                                 json={"model": model, "messages": [{"role": "user", "content": "hi"}]}) as resp:
                await resp.read()
        views = {}
        for name, headers in (("all", AUTH), ("team-a", limited)):
            async with http.get(proc.url + "/metrics", headers=headers) as resp:
                assert resp.status == 200
                metrics = await resp.text()
            async with http.get(proc.url + "/healthz?deep=1", headers=headers) as resp:
                assert resp.status == 200
                health = await resp.json()
            views[name] = (metrics, health)
    everything, _ = views["all"]
    assert 'group="b"' in everything and "pb/model-b" in everything and 'provider="pb"' in everything
    assert [c["provider"] for c in views["all"][1]["cooldowns"]] and all(c["provider"] == "pb" for c in views["all"][1]["cooldowns"])
    own, health = views["team-a"]
    assert 'group="a"' in own and "pa/model-a" in own
    for other in ('group="b"', 'alias="m-b"', "pb/model-b", 'provider="pb"'):
        assert other not in own, other
    assert health["cooldowns"] == []


# ---------------------------------------------------------------- the wrong-key lockout and its exemption


async def _post(http: aiohttp.ClientSession, url: str, key: str) -> int:
    body = {"model": "m-openai", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
        await resp.read()
        return resp.status


async def test_exempt_networks_are_never_locked_out_and_others_are(start_upstream, daemon):
    upstream = await start_upstream("openai")
    proc = daemon(proxy_config([upstream], server={"auth_failures_per_minute": 3, "auth_lockout_exempt": ["127.0.0.1"]}))
    remote = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))  # stands for a client on another machine
    async with aiohttp.ClientSession() as local, aiohttp.ClientSession(connector=remote) as far:
        assert [await _post(far, proc.url, "wrong-key") for _ in range(3)] == [401] * 3
        assert await _post(far, proc.url, ACCESS_KEY) == 429  # locked out, even with the right key
        assert [await _post(local, proc.url, "wrong-key") for _ in range(10)] == [401] * 10
        assert await _post(local, proc.url, ACCESS_KEY) == 200  # the exempt address still gets in


async def test_loopback_is_exempt_by_default(start_upstream, daemon):
    upstream = await start_upstream("openai")
    proc = daemon(proxy_config([upstream], server={"auth_failures_per_minute": 3}))
    other_loopback = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession() as local, aiohttp.ClientSession(connector=other_loopback) as also_local:
        assert [await _post(local, proc.url, "wrong-key") for _ in range(6)] == [401] * 6
        assert [await _post(also_local, proc.url, "wrong-key") for _ in range(6)] == [401] * 6
        assert await _post(local, proc.url, ACCESS_KEY) == 200
        assert await _post(also_local, proc.url, ACCESS_KEY) == 200


def test_a_bad_exempt_network_is_a_config_error(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "bad.toml"
    path.write_text('[server]\nauth_lockout_exempt = ["127.0.0.1", "10.0.0.0/33"]\n')
    done = subprocess.run([sys.executable, "-m", "ccproxyd", "--config", str(path), "check"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert f"{path}: server.auth_lockout_exempt[1]: expected a network like 10.0.0.0/8 or an address, got '10.0.0.0/33'" in done.stderr


# ---------------------------------------------------------------- an unreadable upstream body


@pytest.mark.parametrize("body,content_type", [(b"<html><body>502 from the load balancer</body></html>", "text/html"),
                                               (b'{"id": "msg_1", "content": [', "application/json")])
async def test_an_unreadable_answer_is_a_502_from_every_upstream_protocol(aiohttp_server, daemon, body, content_type):
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    config = proxy_config([], providers={p: {"protocol": p, "base_url": url + ("/v1" if p == "openai" else ""), "api_keys": [UPSTREAM_KEY]}
                                         for p in PROTOCOLS},
                          groups={"default": {"models": {f"m-{p}": [f"{p}/model"] for p in PROTOCOLS}}})
    proc = daemon(config)
    statuses = {}
    async with aiohttp.ClientSession() as http:
        for protocol in PROTOCOLS:
            path, request = chat_request("openai", f"m-{protocol}")
            async with http.post(proc.url + path, json=request, headers=AUTH) as resp:
                statuses[protocol] = resp.status
                check_error("openai", resp.status, await resp.read())
    assert statuses == {p: 502 for p in PROTOCOLS}


@pytest.mark.parametrize("remote,exempt", [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
                                           ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("2001:db8::1", False), ("", False)])
def test_the_default_exemption_is_loopback_only(remote, exempt):
    from ccproxyd.config import Server
    from ccproxyd.server import lockout_exempt

    assert lockout_exempt(remote, Server().auth_lockout_exempt) is exempt
