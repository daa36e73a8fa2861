"""Model lists through every SDK, count_tokens, /api/show, and a Claude Code-shaped request."""

from __future__ import annotations

import aiohttp
import anthropic
import ollama
import openai
import pytest
from google import genai
from google.genai import types as gtypes

from tests.conftest import ACCESS_KEY, proxy_config
from tests.emulators.base import Reply


@pytest.fixture
async def proxy(start_upstream, start_proxy):
    openai_up = await start_upstream("openai")
    claude_up = await start_upstream("claude")
    config = proxy_config([openai_up, claude_up])
    config["providers"]["claude"]["vision"] = True
    config["groups"]["default"]["models"]["wild-*"] = ["openai/x"]
    config["groups"]["team"] = {"models": {"team-model": ["openai/y"]}}
    p = await start_proxy(config)
    p.upstreams = {"openai": openai_up.emulator, "claude": claude_up.emulator}
    return p


async def test_model_lists_parse_in_every_sdk(proxy):
    expected = ["m-openai", "m-claude"]  # wildcard patterns are not models
    oa = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=ACCESS_KEY)
    assert [m.id for m in (await oa.models.list()).data] == expected
    team = openai.AsyncOpenAI(base_url=proxy.url + "/team/v1", api_key=ACCESS_KEY)
    assert [m.id for m in (await team.models.list()).data] == ["team-model"]
    await team.close()
    an = anthropic.AsyncAnthropic(base_url=proxy.url, api_key=ACCESS_KEY)
    assert [m.id async for m in an.models.list()] == expected
    for version in ("v1", "v1beta"):
        g = genai.Client(api_key=ACCESS_KEY, http_options=gtypes.HttpOptions(base_url=proxy.url + "/", api_version=version))
        assert [m.name async for m in await g.aio.models.list()] == [f"models/{m}" for m in expected]
        await g.aio.aclose()
    ol = ollama.AsyncClient(host=proxy.url, headers={"Authorization": f"Bearer {ACCESS_KEY}"})
    assert [m.model for m in (await ol.list()).models] == expected
    shown = await ol.show("m-claude")
    assert "tools" in shown.capabilities and "vision" in shown.capabilities
    assert "vision" not in (await ol.show("m-openai")).capabilities
    with pytest.raises(ollama.ResponseError) as e:
        await ol.show("nope")
    assert e.value.status_code == 404
    await oa.close()
    await an.close()
    await ol.close()


async def test_model_list_errors_are_in_the_asking_sdks_shape(proxy):
    an = anthropic.AsyncAnthropic(base_url=proxy.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        [m async for m in an.models.list()]
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "authentication_error"
    await an.close()


async def test_count_tokens_forwarded_to_claude_and_estimated_otherwise(proxy):
    an = anthropic.AsyncAnthropic(base_url=proxy.url, api_key=ACCESS_KEY, max_retries=0)
    messages = [{"role": "user", "content": "How many tokens is this sentence, roughly?"}]
    forwarded = await an.messages.count_tokens(model="m-claude", messages=messages, system="be terse")
    assert proxy.upstreams["claude"].last.path == "/v1/messages/count_tokens"
    assert proxy.upstreams["claude"].last.body["model"] == "upstream-claude-model"
    assert forwarded.input_tokens > 0
    before = len(proxy.upstreams["openai"].received)
    estimated = await an.messages.count_tokens(model="m-openai", messages=messages)
    assert estimated.input_tokens > 0
    assert len(proxy.upstreams["openai"].received) == before  # nothing sent to an upstream that cannot count
    g = genai.Client(api_key=ACCESS_KEY, http_options=gtypes.HttpOptions(base_url=proxy.url + "/", api_version="v1beta"))
    counted = await g.aio.models.count_tokens(model="m-openai", contents="hello there")
    assert counted.total_tokens > 0
    await g.aio.aclose()
    await an.close()


CLAUDE_CODE_TOOLS = [
    {"name": f"Tool{i}", "description": f"tool number {i}", "input_schema": {"type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"],
                                                                              "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#"}}
    for i in range(22)
]
CLAUDE_CODE_BODY = {
    "model": "MODEL",
    "max_tokens": 32000,
    "stream": True,
    "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "<system-reminder>ctx</system-reminder>"}, {"type": "text", "text": "fix the bug", "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Looking."}]},
        {"role": "system", "content": "The user switched to plan mode."},
        {"role": "user", "content": "go on"},
    ],
    "tools": CLAUDE_CODE_TOOLS,
    "thinking": {"type": "adaptive"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "output_config": {"effort": "medium"},
    "metadata": {"user_id": "user_abc_account_123_session_456"},
}


@pytest.mark.parametrize("upstream", ["openai", "claude"])
async def test_a_claude_code_request(proxy, upstream):
    emulator = proxy.upstreams[upstream]
    emulator.script(Reply(text="Done.", chunks=1))
    body = {**CLAUDE_CODE_BODY, "model": f"m-{upstream}"}
    headers = {"x-api-key": ACCESS_KEY, "anthropic-version": "2023-06-01",
               "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27"}
    async with aiohttp.ClientSession() as s:
        async with s.head(proxy.url + "/") as r:
            assert r.status == 200
        async with s.post(proxy.url + "/v1/messages?beta=true", json=body, headers=headers) as r:
            text = await r.text()
            assert r.status == 200, text
    assert "event: message_stop" in text and "Done." in text, text
    sent = emulator.last
    if upstream == "claude":  # same protocol: Claude Code's own fields and beta header go through
        assert sent.body["context_management"] == CLAUDE_CODE_BODY["context_management"]
        assert sent.body["metadata"] == CLAUDE_CODE_BODY["metadata"]
        assert sent.headers["anthropic-beta"] == headers["anthropic-beta"]
        assert sent.body["system"][0]["cache_control"] == {"type": "ephemeral"}
        assert sent.headers["x-api-key"] != ACCESS_KEY
    else:  # a foreign upstream sees none of them, and the mid-conversation system message did not break it
        for field in ("context_management", "output_config", "metadata", "thinking", "cache_control"):
            assert field not in repr(sent.body)
        assert "anthropic-beta" not in sent.headers
        assert len(sent.body["tools"]) == 22
        assert "plan mode" in repr(sent.body["messages"])
