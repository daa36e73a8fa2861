"""The upstream decides (issue 12): cooldowns only steer, the upstream's status, Retry-After and
rate-limit headers reach the client, every request is accounted for, a presented key is checked,
and usage is never silently zero. Official SDKs → ccproxyd → fault-injecting emulators."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

import aiohttp
import anthropic
import ollama
import openai
import pytest
from aiohttp import web

from ccproxyd import ir
from tests.clients import DRIVERS
from tests.conftest import ACCESS_KEY, PROTOCOLS, Upstream, proxy_config
from tests.emulators.base import Reply
from tests.emulators.claude import ClaudeEmulator
from tests.emulators.faults import FaultyOpenAIEmulator
from tests import test_resilience
from tests.test_resilience import Clock

HELLO = [{"role": "user", "content": "hello"}]
LIMITS = {
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-remaining-requests": "59",
    "x-ratelimit-reset-tokens": "6ms",
    "anthropic-ratelimit-tokens-remaining": "9000",
    "anthropic-ratelimit-tokens-reset": "2026-01-01T00:00:00Z",
}


class NoUsageEmulator(FaultyOpenAIEmulator):
    """An OpenAI-compatible server that never reports usage, asked or not (``"usage": null``)."""

    @staticmethod
    def usage(reply: Reply) -> Any:
        return None


@pytest.fixture
def start_emulator(aiohttp_server):
    """An emulator whose every response also carries ``headers`` (the upstream's rate-limit headers)."""

    async def start(cls: type = FaultyOpenAIEmulator, headers: dict[str, str] | None = None, suffix: str = "/v1") -> tuple[Any, str]:
        emulator = cls()
        if headers:
            async def add(request: web.Request, response: web.StreamResponse) -> None:
                response.headers.update(headers)
            emulator.app.on_response_prepare.append(add)
        server = await aiohttp_server(emulator.app)
        return emulator, str(server.make_url("")).rstrip("/") + suffix

    return start


def make_config(*args: Any, **server: Any) -> dict:
    """test_resilience's config (OpenAI providers, quick timeouts), without a stats database unless asked."""
    return test_resilience.make_config(*args, **{"stats": False, **server})


def openai_client(url: str, key: str = ACCESS_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


# ---------------------------------------------------------------- cooldowns only steer


@pytest.mark.parametrize("failure", [
    Reply(error_status=429, retry_after="30", error_message="slow down"),
    Reply(error_status=500, error_message="a bad moment"),
], ids=["429 Retry-After 30", "500"])
async def test_a_single_target_alias_answers_right_after_a_failure(start_emulator, run_daemon, failure):
    emulator, url = await start_emulator()
    emulator.script(failure, Reply(text="fine again"))
    daemon = await asyncio.to_thread(run_daemon, make_config({"p": (url, ["k"])}, {"m": ["p/x"]}))
    async with openai_client(daemon.url) as client:
        with pytest.raises(openai.APIStatusError) as e:
            await client.chat.completions.create(model="m", messages=HELLO)
        assert e.value.status_code == failure.error_status and failure.error_message in e.value.message
        if failure.error_status == 429:
            assert e.value.response.headers["retry-after"] == "30"
        # the deployment is cooling now, but it is the alias's only one: the upstream is asked again
        answer = await client.chat.completions.create(model="m", messages=HELLO)
    assert answer.choices[0].message.content == "fine again"
    assert len(emulator.received) == 2


async def test_every_target_cooling_makes_exactly_one_attempt_and_its_429_carries_retry_after(start_emulator, start_proxy):
    first, first_url = await start_emulator()
    second, second_url = await start_emulator()
    first.script(Reply(error_status=429, retry_after="20", error_message="first is busy"))
    second.script(Reply(error_status=429, error_message="second is busy"))  # no Retry-After of its own
    proxy = await start_proxy(make_config({"a": (first_url, ["ka"]), "b": (second_url, ["kb"])}, {"m": ["a/x", "b/y"]},
                                          group={"strategy": "priority"}))
    proxy.state.router.clock = Clock()
    async with openai_client(proxy.url) as client:
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="m", messages=HELLO)
        assert (len(first.received), len(second.received)) == (1, 1)
        with pytest.raises(openai.RateLimitError) as e:
            await client.chat.completions.create(model="m", messages=HELLO)
    # one attempt, at b (cooling 1 s against a's 20 s); its 429 is the client's, with when to come back:
    # b's cooldown doubled to 2 s, the soonest of the two
    assert (len(first.received), len(second.received)) == (1, 2)
    assert "second is busy" in e.value.message
    assert e.value.response.headers["retry-after"] == "2"


async def test_a_two_target_alias_still_skips_its_cooling_target(start_emulator, start_proxy):
    first, first_url = await start_emulator()
    second, second_url = await start_emulator()
    first.script(Reply(error_status=429, retry_after="30", error_message="busy"), Reply(text="from a"))
    second.script(Reply(text="from b"))
    proxy = await start_proxy(make_config({"a": (first_url, ["ka"]), "b": (second_url, ["kb"])}, {"m": ["a/x", "b/y"]},
                                          group={"strategy": "priority"}))
    proxy.state.router.clock = Clock()
    async with openai_client(proxy.url) as client:
        texts = [(await client.chat.completions.create(model="m", messages=HELLO, stream=False)).choices[0].message.content for _ in range(4)]
    assert texts == ["from b"] * 4
    assert (len(first.received), len(second.received)) == (1, 4)  # a was never asked while cooling


# ---------------------------------------------------------------- the upstream's status stands


async def test_529_reaches_a_claude_client_as_529_and_an_openai_client_as_503(start_emulator, start_proxy):
    emulator, url = await start_emulator(ClaudeEmulator, suffix="")
    emulator.script(Reply(error_status=529, error_message="Overloaded"))
    config = {
        "server": {"listen": "127.0.0.1:0", "stats": False},
        "keys": [{"name": "tests", "key": ACCESS_KEY}],
        "providers": {"claude": {"protocol": "claude", "base_url": url, "api_keys": ["sk-ant-upstream-0001"]}},
        "groups": {"default": {"models": {"m": ["claude/claude-x"]}}},
    }
    proxy = await start_proxy(config)
    async with anthropic.AsyncAnthropic(base_url=proxy.url, api_key=ACCESS_KEY, max_retries=0) as claude:
        with pytest.raises(anthropic.APIStatusError) as e:
            await claude.messages.create(model="m", max_tokens=10, messages=HELLO)
    assert e.value.status_code == 529 and e.value.body["error"]["type"] == "overloaded_error"
    assert "Overloaded" in e.value.body["error"]["message"]
    assert int(e.value.response.headers["retry-after"]) >= 1
    async with openai_client(proxy.url) as client:
        with pytest.raises(openai.InternalServerError) as e:
            await client.chat.completions.create(model="m", messages=HELLO)
    assert e.value.status_code == 503 and "Overloaded" in e.value.message
    assert int(e.value.response.headers["retry-after"]) >= 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_refused_connection_is_502_and_its_message_says_so(start_proxy, stream):
    from tests.emulators.faults import refused_url

    proxy = await start_proxy(make_config({"p": (refused_url(), ["k"])}, {"m": ["p/x"]}))
    async with openai_client(proxy.url) as client:
        with pytest.raises(openai.APIStatusError) as e:
            await client.chat.completions.create(model="m", messages=HELLO, stream=stream)
    assert e.value.status_code == 502 and "unreachable" in e.value.message and "every attempt for 'm' failed: p/x:502" in e.value.message


# ---------------------------------------------------------------- limits visible to the client


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_rate_limit_headers_reach_the_client_on_success_and_on_error(start_emulator, start_proxy, stream):
    emulator, url = await start_emulator(headers={**LIMITS, "x-emulator-internal": "not for clients"})
    emulator.script(Reply(text="ok"), Reply(error_status=429, retry_after="7", error_message="slow down"))
    proxy = await start_proxy(make_config({"p": (url, ["k"])}, {"m": ["p/x"]}))
    async with openai_client(proxy.url) as client:
        raw = await client.chat.completions.with_raw_response.create(model="m", messages=HELLO, stream=stream)
        for name, value in LIMITS.items():
            assert raw.headers[name] == value
        assert "x-emulator-internal" not in raw.headers
        if stream:
            assert [c async for c in raw.parse()]
        with pytest.raises(openai.RateLimitError) as e:
            await client.chat.completions.create(model="m", messages=HELLO, stream=stream)
    headers = e.value.response.headers
    assert headers["retry-after"] == "7" and all(headers[name] == value for name, value in LIMITS.items())


async def test_a_claude_client_sees_the_limits_and_retry_after_ms(start_emulator, start_proxy):
    emulator, url = await start_emulator(headers={**LIMITS, "retry-after-ms": "1500"})
    emulator.script(Reply(error_status=429, error_message="slow down"))
    proxy = await start_proxy(make_config({"p": (url, ["k"])}, {"m": ["p/x"]}))
    async with anthropic.AsyncAnthropic(base_url=proxy.url, api_key=ACCESS_KEY, max_retries=0) as claude:
        with pytest.raises(anthropic.RateLimitError) as e:
            await claude.messages.create(model="m", max_tokens=10, messages=HELLO)
    headers = e.value.response.headers
    assert headers["retry-after-ms"] == "1500" and headers["anthropic-ratelimit-tokens-remaining"] == "9000"
    assert headers["retry-after"] == "2"  # whole seconds, rounded up from the upstream's 1.5 s


# ---------------------------------------------------------------- every request is accounted for


async def test_refusals_before_routing_are_logged_and_counted(start_emulator, run_daemon):
    _, url = await start_emulator()
    daemon = await asyncio.to_thread(run_daemon, make_config({"p": (url, ["k"])}, {"m": ["p/x"]}, max_body_bytes=1024))
    auth = {"authorization": f"Bearer {ACCESS_KEY}"}
    secret_body = {"model": "m", "messages": [{"role": "user", "content": "a private thought"}]}
    refusals = [
        ("POST", "/v1/audio/speech", auth, json.dumps(secret_body), 404),
        ("GET", "/v1/chat/completions", auth, None, 405),
        ("POST", "/v1/chat/completions", {}, json.dumps(secret_body), 401),
        ("POST", "/v1/chat/completions", {"authorization": "Bearer sk-wrong-guess-0001"}, json.dumps(secret_body), 401),
        ("POST", "/v1/chat/completions", auth, json.dumps({**secret_body, "pad": "x" * 2000}), 413),
        ("POST", "/v1/chat/completions", auth, '{"model": "m", "messages": [', 400),
    ]
    async with aiohttp.ClientSession() as s:
        for method, path, headers, data, status in refusals:
            async with s.request(method, daemon.url + path, data=data, headers={**headers, "content-type": "application/json"}) as r:
                assert r.status == status, (path, await r.text())
        async with s.get(daemon.url + "/metrics", headers=auth) as r:
            metrics = await r.text()
    for status in (404, 405, 401, 413, 400):
        counted = [line for line in metrics.splitlines() if line.startswith("ccproxyd_requests_total{") and f'status="{status}"' in line]
        assert counted, (status, metrics)
    assert any('status="401"' in line and line.endswith(" 2") for line in metrics.splitlines() if line.startswith("ccproxyd_requests_total{"))
    daemon.proc.terminate()
    _, stderr = await asyncio.to_thread(daemon.proc.communicate, timeout=15)
    access = [line for line in stderr.splitlines() if "ccproxyd.access" in line]
    assert any("unknown_path" in line and "status=404" in line and "path=/v1/audio/speech" in line for line in access), stderr
    assert any("method_not_allowed" in line and "status=405" in line for line in access), stderr
    for status in (401, 413, 400):
        assert any(f"status={status}" in line for line in access), (status, stderr)
    assert ACCESS_KEY not in stderr and "sk-wrong-guess-0001" not in stderr and "a private thought" not in stderr


# ---------------------------------------------------------------- a presented key is checked


async def test_a_wrong_key_on_a_keyless_protocol_is_refused(start_emulator, start_proxy):
    _, url = await start_emulator()
    proxy = await start_proxy(make_config({"p": (url, ["k"])}, {"m": ["p/x"]}, keyless_loopback=["ollama"]))
    chat = {"model": "m", "messages": HELLO, "stream": False}
    no_key = ollama.AsyncClient(host=proxy.url)
    wrong = ollama.AsyncClient(host=proxy.url, headers={"authorization": "Bearer sk-not-the-key-0001"})
    right = ollama.AsyncClient(host=proxy.url, headers={"authorization": f"Bearer {ACCESS_KEY}"})
    try:
        assert (await no_key.chat(**chat)).message.content == "Hello from the emulator."
        assert (await right.chat(**chat)).message.content == "Hello from the emulator."
        with pytest.raises(ollama.ResponseError) as e:
            await wrong.chat(**chat)
        assert e.value.status_code == 401 and "invalid access key" in e.value.error
    finally:
        for client in (no_key, wrong, right):
            await client.close()
    async with aiohttp.ClientSession() as s:  # a key in any of the places keys are read from is checked
        async with s.post(proxy.url + "/api/chat?key=wrong-key-0002", json=chat) as r:
            assert r.status == 401


async def test_the_lockout_429_says_when_the_address_may_try_again(start_emulator, start_proxy):
    _, url = await start_emulator()
    proxy = await start_proxy(make_config({"p": (url, ["k"])}, {"m": ["p/x"]}, auth_failures_per_minute=2,
                                                auth_lockout_exempt=[]))  # loopback stands for a remote client here
    async with openai_client(proxy.url, key="sk-a-wrong-guess-01") as client:
        for _ in range(2):
            with pytest.raises(openai.AuthenticationError):
                await client.chat.completions.create(model="m", messages=HELLO)
        with pytest.raises(openai.RateLimitError) as e:
            await client.chat.completions.create(model="m", messages=HELLO)
    assert 58 <= int(e.value.response.headers["retry-after"]) <= 60


# ---------------------------------------------------------------- usage is never silently zero


PROMPT = "Tell me something. " * 20  # 380 characters: 95 tokens by the four-characters rule
ANSWER = "Hello from the emulator."  # 24 characters: 6 tokens


def _stats_config(url: str, tmp_path, **provider: Any) -> dict:
    config = make_config({"p": (url, ["k"])}, {"m": ["p/x"]}, stats=True, state_dir=str(tmp_path))
    config["providers"]["p"].update(provider)
    return config


def _estimated_rows(proxy) -> list[tuple]:
    assert proxy.state.stats is not None and proxy.state.stats.flush()
    with sqlite3.connect(proxy.state.stats.path) as db:
        return db.execute("SELECT input_tokens, output_tokens, usage_estimated FROM requests WHERE action = 'chat'").fetchall()


def _expected_input() -> int:
    return ir.estimate_tokens(ir.Request(model="m", messages=[ir.Message("user", [ir.Text(PROMPT)])]))


async def test_a_stream_without_usage_gives_an_estimate_and_says_so(start_emulator, start_proxy, tmp_path):
    _, url = await start_emulator()
    proxy = await start_proxy(_stats_config(url, tmp_path, stream_usage=False))  # the upstream is not asked for usage
    assert _expected_input() == 95
    async with openai_client(proxy.url) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": PROMPT}], stream=True, stream_options={"include_usage": True})
        assert raw.headers["x-ccproxy-usage"] == "estimated"
        chunks = [c async for c in raw.parse()]
    usage = [c.usage for c in chunks if c.usage]
    assert [(u.prompt_tokens, u.completion_tokens) for u in usage] == [(95, 6)]
    assert await asyncio.to_thread(_estimated_rows, proxy) == [(95, 6, 1)]


async def test_a_json_answer_without_usage_gives_an_estimate_and_the_header(start_emulator, start_proxy, tmp_path):
    _, url = await start_emulator(NoUsageEmulator)
    proxy = await start_proxy(_stats_config(url, tmp_path))
    async with openai_client(proxy.url) as client:
        raw = await client.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": PROMPT}])
    assert raw.headers["x-ccproxy-usage"] == "estimated"
    assert (raw.parse().usage.prompt_tokens, raw.parse().usage.completion_tokens) == (95, 6)
    assert await asyncio.to_thread(_estimated_rows, proxy) == [(95, 6, 1)]


async def test_real_usage_is_not_marked(start_emulator, start_proxy, tmp_path):
    _, url = await start_emulator()
    proxy = await start_proxy(_stats_config(url, tmp_path))
    async with openai_client(proxy.url) as client:
        for stream in (False, True):
            raw = await client.chat.completions.with_raw_response.create(
                model="m", messages=HELLO, stream=stream, **({"stream_options": {"include_usage": True}} if stream else {}))
            assert "x-ccproxy-usage" not in raw.headers
            if stream:
                assert [c async for c in raw.parse()]
    assert await asyncio.to_thread(_estimated_rows, proxy) == [(21, 9, 0), (21, 9, 0)]


@pytest.mark.parametrize("client_protocol", PROTOCOLS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_every_client_gets_an_estimate_when_the_upstream_sends_no_usage(start_emulator, start_proxy, client_protocol, stream):
    """An upstream that was asked for usage and sent none: the stream's usage is estimated (its headers
    went out before that was known, so only the access log and stats say so for a stream)."""
    emulator, url = await start_emulator(NoUsageEmulator, suffix="")
    proxy = await start_proxy(proxy_config([Upstream("openai", emulator, url)]))
    records = []
    proxy.state.observer.sinks.append(records.append)
    driver = DRIVERS[client_protocol](proxy.url, "m-openai")
    try:
        result = await driver.chat([("user", PROMPT)], stream=stream)
    finally:
        await driver.close()
    assert result.text == ANSWER
    assert (result.input_tokens, result.output_tokens) == (95, 6)
    chat = [r for r in records if r.action == "chat"]
    assert [(r.input_tokens, r.output_tokens, r.usage_estimated) for r in chat] == [(95, 6, True)]
