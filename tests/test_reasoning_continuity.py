"""Reasoning an upstream needs back reaches it again through clients of other protocols:
a Responses upstream's encrypted blob through a Claude client's thinking signature, and an
OpenAI-compatible server's ``reasoning_content`` through OpenAI and Claude clients."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from tests.conftest import ACCESS_KEY, proxy_config
from tests.emulators.base import Reply, ToolCallScript
from tests.emulators.responses import ENCRYPTED_PREFIX

WEATHER = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


async def _setup(start_upstream, start_proxy, tmp_path, protocol):
    upstream = await start_upstream(protocol)
    proxy = await start_proxy(proxy_config([upstream], server={"state_dir": str(tmp_path)}))
    return upstream.emulator, proxy


@pytest.mark.parametrize("stream", [False, True])
async def test_claude_client_carries_a_responses_upstreams_reasoning(start_upstream, start_proxy, tmp_path, stream):
    emulator, proxy = await _setup(start_upstream, start_proxy, tmp_path, "responses")
    emulator.script(Reply(text="", reasoning="Look it up.", reasoning_signature="blob-7", tool_calls=[ToolCallScript("get_weather", {"city": "Oslo"}, "call_o")]),
                    Reply(text="Cold."))
    client = anthropic.AsyncAnthropic(base_url=proxy.url, api_key=ACCESS_KEY, max_retries=0)
    kwargs = {"model": "m-responses", "max_tokens": 4000, "tools": [WEATHER], "thinking": {"type": "enabled", "budget_tokens": 2048}}
    messages = [{"role": "user", "content": "Oslo?"}]
    if stream:
        async with client.messages.stream(messages=messages, **kwargs) as s:
            first = await s.get_final_message()
    else:
        first = await client.messages.create(messages=messages, **kwargs)
    assert emulator.last.body["store"] is False and emulator.last.body["include"] == ["reasoning.encrypted_content"]
    thinking = first.content[0]
    assert thinking.type == "thinking" and thinking.signature
    messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_o", "content": "-5C"}]}]
    second = await client.messages.create(messages=messages, **kwargs)
    await client.close()
    assert second.content[-1].text == "Cold."
    reasoning = [i for i in emulator.last.body["input"] if i.get("type") == "reasoning"]
    assert [r["encrypted_content"] for r in reasoning] == [ENCRYPTED_PREFIX + "blob-7"]


async def test_openai_client_reasoning_content_goes_back_to_an_openai_compatible_upstream(start_upstream, start_proxy, tmp_path):
    emulator, proxy = await _setup(start_upstream, start_proxy, tmp_path, "openai")
    emulator.script(Reply(text="done"))
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=ACCESS_KEY, max_retries=0) as client:
        await client.chat.completions.create(model="m-openai", messages=[
            {"role": "user", "content": "Oslo?"},
            {"role": "assistant", "content": None, "reasoning_content": "Need the tool.",
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Oslo"})}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "cold"},
        ], tools=[{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}])
    assistant = emulator.last.body["messages"][1]
    assert assistant["reasoning_content"] == "Need the tool."


async def test_claude_client_carries_reasoning_content_of_an_openai_compatible_upstream(start_upstream, start_proxy, tmp_path):
    emulator, proxy = await _setup(start_upstream, start_proxy, tmp_path, "openai")
    emulator.script(Reply(text="", reasoning="Think first.", tool_calls=[ToolCallScript("get_weather", {"city": "Rome"}, "call_r")]), Reply(text="Warm."))
    client = anthropic.AsyncAnthropic(base_url=proxy.url, api_key=ACCESS_KEY, max_retries=0)
    kwargs = {"model": "m-openai", "max_tokens": 4000, "tools": [WEATHER], "thinking": {"type": "enabled", "budget_tokens": 2048}}
    first = await client.messages.create(messages=[{"role": "user", "content": "Rome?"}], **kwargs)
    await client.messages.create(messages=[
        {"role": "user", "content": "Rome?"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_r", "content": "25C"}]}], **kwargs)
    await client.close()
    assistant = next(m for m in emulator.last.body["messages"] if m["role"] == "assistant")
    assert assistant["reasoning_content"] == "Think first."


async def test_plain_reasoning_without_a_source_is_not_sent_as_reasoning_content(start_upstream, start_proxy, tmp_path):
    """Thinking of unknown origin (an Ollama client's) goes to no upstream that did not make it."""
    emulator, proxy = await _setup(start_upstream, start_proxy, tmp_path, "openai")
    import ollama

    client = ollama.AsyncClient(host=proxy.url, headers={"Authorization": f"Bearer {ACCESS_KEY}"})
    await client.chat(model="m-openai", messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "thinking": "hmm"},
                                                  {"role": "user", "content": "c"}])
    assert "reasoning_content" not in emulator.last.body["messages"][1]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("thoughts", [False, True])
async def test_gemini_client_carries_a_responses_upstreams_reasoning(start_upstream, start_proxy, tmp_path, stream, thoughts):
    from google import genai
    from google.genai import types

    emulator, proxy = await _setup(start_upstream, start_proxy, tmp_path, "responses")
    emulator.script(Reply(text="", reasoning="Look it up.", reasoning_signature="blob-9", tool_calls=[ToolCallScript("get_weather", {"city": "Lima"}, "call_l")]),
                    Reply(text="Mild."))
    client = genai.Client(api_key=ACCESS_KEY, http_options=types.HttpOptions(base_url=proxy.url + "/"))
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[types.FunctionDeclaration(name="get_weather", parameters_json_schema=WEATHER["input_schema"])])],
        thinking_config=types.ThinkingConfig(include_thoughts=thoughts, thinking_budget=1024),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    contents = [types.Content(role="user", parts=[types.Part(text="Lima?")])]
    if stream:
        chunks = [c async for c in await client.aio.models.generate_content_stream(model="m-responses", contents=contents, config=config)]
        parts = [p for c in chunks for p in c.candidates[0].content.parts]
    else:
        parts = (await client.aio.models.generate_content(model="m-responses", contents=contents, config=config)).candidates[0].content.parts
    assert any(p.function_call for p in parts)
    assert any(p.thought_signature for p in parts)
    contents += [types.Content(role="model", parts=parts),
                 types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(id="call_l", name="get_weather", response={"result": "18C"}))])]
    second = await client.aio.models.generate_content(model="m-responses", contents=contents, config=config)
    await client.aio.aclose()
    assert second.text == "Mild."
    reasoning = [i for i in emulator.last.body["input"] if i.get("type") == "reasoning"]
    assert [r["encrypted_content"] for r in reasoning] == [ENCRYPTED_PREFIX + "blob-9"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("upstream_protocol", ["responses", "claude"])
async def test_openai_client_carries_reasoning_in_reasoning_details(start_upstream, start_proxy, tmp_path, stream, upstream_protocol):
    """OpenRouter-style ``reasoning_details`` (type ``reasoning.encrypted``) carry what the upstream needs back."""
    emulator, proxy = await _setup(start_upstream, start_proxy, tmp_path, upstream_protocol)
    emulator.script(Reply(text="", reasoning="Look it up.", reasoning_signature="sig-11", tool_calls=[ToolCallScript("get_weather", {"city": "Kyiv"}, "call_k")]),
                    Reply(text="Cool."))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}]
    messages = [{"role": "user", "content": "Kyiv?"}]
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=ACCESS_KEY, max_retries=0) as client:
        kwargs = {"model": f"m-{upstream_protocol}", "tools": tools, "reasoning_effort": "low"}
        if stream:
            message: dict = {"role": "assistant", "content": None, "reasoning_details": [], "tool_calls": []}
            async for chunk in await client.chat.completions.create(messages=messages, stream=True, **kwargs):
                for choice in chunk.choices:
                    extra = choice.delta.model_extra or {}
                    message["reasoning_details"] += extra.get("reasoning_details") or []
                    for call in choice.delta.tool_calls or []:
                        if call.id:
                            message["tool_calls"].append({"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": ""}})
                        message["tool_calls"][-1]["function"]["arguments"] += call.function.arguments or ""
        else:
            first = await client.chat.completions.create(messages=messages, **kwargs)
            message = first.choices[0].message.model_dump(exclude_none=True)
        assert [d["type"] for d in message["reasoning_details"]] == ["reasoning.encrypted"]
        messages += [message, {"role": "tool", "tool_call_id": "call_k", "content": "12C"}]
        second = await client.chat.completions.create(messages=messages, **kwargs)
    assert second.choices[0].message.content == "Cool."
    if upstream_protocol == "responses":
        reasoning = [i for i in emulator.last.body["input"] if i.get("type") == "reasoning"]
        assert [r["encrypted_content"] for r in reasoning] == [ENCRYPTED_PREFIX + "sig-11"]
    else:
        assistant = emulator.last.body["messages"][1]["content"]
        assert assistant[0] == {"type": "thinking", "thinking": "Look it up.", "signature": "sig-11"}
