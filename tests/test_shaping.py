"""Group and provider shaping: each option changes the upstream request as configured.

End to end (openai SDK → ccproxyd → the OpenAI emulator, reading what the
emulator received), plus unit tests of what the wire cannot show.
"""

from __future__ import annotations

import uuid
from typing import Any

import openai
import pytest

from ccproxyd import ir
from ccproxyd.config import Group, Provider
from ccproxyd.protocols.base import UpstreamCall
from ccproxyd.shaping import finish_call, shape_request, use_compat
from tests.conftest import ACCESS_KEY, UPSTREAM_KEY, proxy_config
from tests.emulators.base import Received, Reply
from tests.emulators.faults import refused_url

TOOLS = [
    {"type": "function", "function": {"name": name, "description": f"{name} tool",
                                      "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}
    for name in ("Read", "WebSearch", "WebFetch", "Bash")
]
CONVERSATION = [
    {"role": "system", "content": "You are Claude Code."},
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "first answer"},
    {"role": "user", "content": "second question"},
]


@pytest.fixture
async def send(start_upstream, start_proxy):
    """Send one chat request through a ccproxyd shaped by ``group`` / ``provider`` options; returns what the upstream got."""
    clients: list[openai.AsyncOpenAI] = []

    async def go(group: dict | None = None, provider: dict | None = None, path: str = "/v1", model: str = "m",
                 reply: Reply | None = None, **create: Any) -> Received:
        upstream = await start_upstream("openai")
        upstream.emulator.script(reply or Reply(text="ok"))
        config = proxy_config([upstream])
        config["providers"]["openai"].update(provider or {})
        config["groups"] = {"default": {**(group or {}), "models": {"m": ["openai/up-model"], "other": ["openai/up-model"]}}}
        proxy = await start_proxy(config)
        client = openai.AsyncOpenAI(base_url=proxy.url + path, api_key=ACCESS_KEY, max_retries=0)
        clients.append(client)
        create.setdefault("messages", CONVERSATION)
        if create.get("stream"):
            async for _ in await client.chat.completions.create(model=model, **create):
                pass
        else:
            await client.chat.completions.create(model=model, **create)
        return upstream.emulator.last

    yield go
    for client in clients:
        await client.close()


def system_of(received: Received) -> list[str]:
    return [m["content"] for m in received.body["messages"] if m["role"] == "system"]


def last_user_of(received: Received) -> str:
    return [m["content"] for m in received.body["messages"] if m["role"] == "user"][-1]


# ---------------------------------------------------------------- prompt injection


@pytest.mark.parametrize("mode,position,system,last_user", [
    ("off", "system", ["You are Claude Code."], "second question"),
    ("enhance", "system", ["You are Claude Code.\n\nUse the Bash tool sparingly."], "second question"),
    ("replace", "system", ["Use the Bash tool sparingly."], "second question"),
    ("enhance", "user", ["You are Claude Code."], "second question\n\nUse the Bash tool sparingly."),
    ("replace", "user", [], "second question\n\nUse the Bash tool sparingly."),
])
async def test_prompt_injection(send, mode, position, system, last_user):
    got = await send(group={"prompt_injection": mode, "prompt_position": position, "prompt_text": "Use the Bash tool sparingly."})
    assert system_of(got) == system
    assert last_user_of(got) == last_user
    assert [m["content"] for m in got.body["messages"] if m["role"] == "user"][0] == "first question"


async def test_prompt_injection_into_a_request_without_a_system_prompt(send):
    got = await send(group={"prompt_injection": "enhance", "prompt_text": "Be terse."}, messages=[{"role": "user", "content": "hi"}])
    assert got.body["messages"] == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}]


@pytest.mark.parametrize("model,injected", [("m", True), ("other", False)])
async def test_prompt_injection_only_for_aliases_matching_inject_for(send, model, injected):
    got = await send(model=model, group={"prompt_injection": "enhance", "prompt_text": "EXTRA", "inject_for": ["m", "claude-*"]})
    assert ("EXTRA" in system_of(got)[0]) is injected


# ---------------------------------------------------------------- tools, temperature, tool mode


async def test_tool_filter_removes_tools_before_the_request_goes_up(send):
    got = await send(group={"tool_filter": ["WebSearch", "Web*"]}, tools=TOOLS,
                     tool_choice={"type": "function", "function": {"name": "WebFetch"}})
    assert [t["function"]["name"] for t in got.body["tools"]] == ["Read", "Bash"]
    assert got.body["tool_choice"] == "auto"  # the forced tool is gone, so the model chooses


async def test_tool_filter_that_removes_every_tool_drops_a_required_choice(send):
    got = await send(group={"tool_filter": ["*"]}, tools=TOOLS, tool_choice="required")
    assert "tools" not in got.body and "tool_choice" not in got.body


@pytest.mark.parametrize("given,sent", [(1.0, 0.7), (0.5, 0.35), (None, None)])
async def test_temperature_ratio_multiplies_a_client_given_temperature(send, given, sent):
    kwargs = {} if given is None else {"temperature": given}
    got = await send(group={"temperature_ratio": 0.7}, **kwargs)
    if sent is None:
        assert "temperature" not in got.body
    else:
        assert got.body["temperature"] == pytest.approx(sent)


@pytest.mark.parametrize("group_mode,path,compat", [
    ("auto", "/v1", False),
    ("auto", "/compat_mode/v1", True),
    ("compat", "/v1", True),
    ("native", "/compat_mode/v1", False),
])
async def test_group_tool_mode(send, group_mode, path, compat):
    got = await send(group={"tool_mode": group_mode}, path=path, tools=TOOLS[:1])
    assert ("tools" not in got.body) is compat
    assert ("<tool_call>" in "".join(system_of(got))) is compat


async def test_a_provider_without_native_tools_always_gets_compat(send):
    got = await send(group={"tool_mode": "native"}, provider={"tool_mode": "compat"}, tools=TOOLS[:1])
    assert "tools" not in got.body and "<tool_call>" in system_of(got)[0]


# ---------------------------------------------------------------- provider options


async def test_provider_headers_with_placeholders(send):
    got = await send(provider={"headers": {"X-Session": "{uuid}", "X-Trace": "req-{request_id}", "X-Static": "v1"}},
                     extra_headers={"x-request-id": "client-req-42"})
    assert uuid.UUID(got.headers["x-session"])
    assert got.headers["x-trace"] == "req-client-req-42"
    assert got.headers["x-static"] == "v1"


async def test_provider_params_are_merged_into_the_body(send):
    got = await send(stream=True, provider={"params": {"top_k": 20, "stream_options": {"continuous_usage_stats": True}}})
    assert got.body["top_k"] == 20
    assert got.body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}


@pytest.mark.parametrize("asked,sent", [(32000, 8192), (100, 100), (None, 8192)])
async def test_provider_max_tokens_clamps(send, asked, sent):
    kwargs = {} if asked is None else {"max_tokens": asked}
    got = await send(provider={"max_tokens": 8192}, **kwargs)
    assert got.body["max_tokens"] == sent


@pytest.mark.parametrize("stream_usage", [True, False])
async def test_stream_usage_flag(send, stream_usage):
    got = await send(stream=True, provider={"stream_usage": stream_usage})
    assert ("stream_options" in got.body) is stream_usage


@pytest.mark.parametrize("accepts", [True, False])
async def test_tool_choice_flag(send, accepts):
    got = await send(provider={"tool_choice": accepts}, tools=TOOLS[:1], tool_choice="required")
    assert got.body.get("tool_choice") == ("required" if accepts else None)
    assert [t["function"]["name"] for t in got.body["tools"]] == ["Read"]


async def test_outbound_proxy(start_upstream, start_proxy):
    """base_url points at a dead port; only the outbound proxy (the emulator, as an HTTP proxy) can answer."""
    relay = await start_upstream("openai")
    relay.emulator.script(Reply(text="via the proxy"))
    config = proxy_config([relay])
    dead = refused_url()
    config["providers"]["openai"].update(base_url=dead, proxy=relay.url)
    config["groups"] = {"default": {"models": {"m": ["openai/x"]}}}
    proxy = await start_proxy(config)
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=ACCESS_KEY, max_retries=0) as client:
        r = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "via the proxy"
    assert relay.emulator.last.headers["host"] == dead.removeprefix("http://").removesuffix("/v1")


# ---------------------------------------------------------------- headers


async def test_only_allowlisted_client_headers_go_up(send):
    got = await send(extra_headers={
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "x-client-request-id": "abc-1",
        "anthropic-beta": "interleaved-thinking-2025-05-14",
        "cookie": "session=1",
        "proxy-authorization": "Basic eA==",
        "x-custom": "nope",
        "te": "trailers",
    })
    headers = {k.lower(): v for k, v in got.headers.items()}
    assert headers["traceparent"].startswith("00-0af7")
    assert headers["x-client-request-id"] == "abc-1"
    assert headers["user-agent"].startswith("AsyncOpenAI/Python")
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    for name in ("anthropic-beta", "cookie", "proxy-authorization", "x-custom", "te", "x-api-key"):
        assert name not in headers
    assert not any(ACCESS_KEY in v for v in headers.values())


def _call() -> UpstreamCall:
    return UpstreamCall("http://up/v1/messages", {"content-type": "application/json", "x-api-key": "up"}, {"model": "x"}, False)


def test_anthropic_beta_goes_to_claude_upstreams_only():
    client = {"anthropic-beta": "context-1m-2025-08-07", "authorization": "Bearer client-key", "connection": "keep-alive, x-secret"}
    for protocol, expected in (("claude", "context-1m-2025-08-07"), ("openai", None), ("gemini", None), ("ollama", None)):
        call = _call()
        finish_call(call, Provider("p", protocol, "http://up"), client, "rid")
        assert call.headers.get("anthropic-beta") == expected
        assert "authorization" not in call.headers and "connection" not in call.headers and "x-secret" not in call.headers
        assert call.headers["x-request-id"] == "rid"


def test_the_adapters_own_beta_header_wins():
    call = _call()
    call.headers["anthropic-beta"] = "from-the-request-body"
    finish_call(call, Provider("p", "claude", "http://up"), {"anthropic-beta": "from-the-header"}, "rid")
    assert call.headers["anthropic-beta"] == "from-the-request-body"


def test_each_uuid_placeholder_is_fresh_per_request():
    provider = Provider("p", "openai", "http://up", headers=(("X-Id", "{uuid}"),))
    values = set()
    for _ in range(3):
        call = _call()
        finish_call(call, provider, {}, "rid")
        values.add(call.headers["x-id"])
    assert len(values) == 3


# ---------------------------------------------------------------- shape_request, directly


def _request(**kw: Any) -> ir.Request:
    return ir.Request(model="m", messages=[ir.Message("user", [ir.Text("hi")])], **kw)


def test_shaping_leaves_the_clients_request_untouched_for_the_next_attempt():
    req = _request(system=[ir.Text("sys", {"claude": {"cache_control": {"type": "ephemeral"}}})], temperature=1.0,
                   tools=[ir.Tool("WebSearch"), ir.Tool("Read")], max_tokens=32000)
    group = Group("g", prompt_injection="enhance", prompt_text="more", tool_filter=("WebSearch",), temperature_ratio=0.5)
    shaped = shape_request(req, group, Provider("p", "claude", "http://up", max_tokens=8192), "m")
    assert (shaped.temperature, shaped.max_tokens, [t.name for t in shaped.tools]) == (0.5, 8192, ["Read"])
    # the client's system part keeps its cache mark; the injected text is a part of its own
    assert shaped.system[0] == req.system[0] and shaped.system[1].text == "\n\nmore"
    assert (req.temperature, req.max_tokens, len(req.tools), len(req.system)) == (1.0, 32000, 2, 1)


def test_nothing_configured_changes_nothing():
    req = _request(temperature=0.3, tools=[ir.Tool("WebSearch")])
    assert shape_request(req, Group("g"), Provider("p", "openai", "http://up"), "m") is req


def test_user_position_injection_without_a_user_message_adds_one():
    req = ir.Request(model="m", messages=[ir.Message("assistant", [ir.Text("prefill")])])
    shaped = shape_request(req, Group("g", prompt_injection="enhance", prompt_text="note", prompt_position="user"),
                           Provider("p", "openai", "http://up"), "m")
    assert [(m.role, ir.text_of(m.parts)) for m in shaped.messages] == [("assistant", "prefill"), ("user", "note")]


@pytest.mark.parametrize("provider_mode,group_mode,path_compat,compat", [
    ("native", "auto", False, False), ("native", "auto", True, True),
    ("native", "compat", False, True), ("native", "native", True, False),
    ("compat", "native", False, True), ("compat", "auto", False, True),
])
def test_use_compat(provider_mode, group_mode, path_compat, compat):
    assert use_compat(Group("g", tool_mode=group_mode), Provider("p", "openai", "http://up", tool_mode=provider_mode), path_compat) is compat


def test_default_max_tokens_fills_in_only_when_asked_and_is_clamped():
    req = ir.Request("m", [ir.Message("user", [ir.Text("hi")])])
    provider = Provider("p", "claude", "http://x")
    assert shape_request(req, Group("g"), provider, "m").max_tokens is None
    assert shape_request(req, Group("g"), provider, "m", 4096).max_tokens == 4096
    clamped = Provider("p", "claude", "http://x", max_tokens=1000)
    assert shape_request(req, Group("g"), clamped, "m", 4096).max_tokens == 1000
