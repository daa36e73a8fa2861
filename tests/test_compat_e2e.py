"""Compat mode end to end: the official SDKs through ``/compat_mode/`` against emulators that answer in text only.

Every (client protocol × upstream protocol × stream) pair runs one tool round
trip: tool definitions in, native tool calls out (the model wrote one call in
the Hermes format and one in ccproxy's), tool results back in, final answer;
and the upstream never saw a native tool field, only text naming every tool
and parameter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import anthropic
import ollama
import openai
import pytest
from google import genai
from google.genai import types as gtypes

from ccproxyd.protocols import ADAPTERS
from tests.conftest import ACCESS_KEY, PROTOCOLS, proxy_config
from tests.emulators.base import Reply

TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "days": {"type": "integer", "description": "Forecast length in days"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
    {
        "name": "get_time",
        "description": "Current time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {
                "zone": {"type": "string", "description": "IANA zone name"},
                "options": {
                    "type": "object",
                    "description": "Output options",
                    "properties": {
                        "clock": {"type": "string", "enum": ["12h", "24h"], "description": "Clock style"},
                        "seconds": {"type": "boolean"},
                    },
                    "required": ["clock"],
                },
            },
            "required": ["zone"],
        },
    },
]
PARAMETER_WORDS = ["city", "days", "unit", "zone", "options", "City name", "Forecast length in days", "IANA zone name",
                   "Output options", '"celsius"', '"fahrenheit"']
# The ollama SDK's Tool model keeps only type/items/description/enum of a property: nested fields never leave it.
NESTED_WORDS = ["clock (string, required", "seconds (boolean, optional)", "Clock style", '"12h"', '"24h"']
QUESTION = "Weather in Paris and the time there?"
MODEL_CALLS = (
    "Let me check both.\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": "2"}}\n</tool_call>\n'
    "<cs:tool_use><name>get_time</name><args>"
    '<arg name="zone" type="string">Europe/Paris</arg>'
    '<arg name="options" type="object">{&quot;clock&quot;: &quot;24h&quot;}</arg>'
    "</args></cs:tool_use>"
)
EXPECTED_CALLS = [("get_weather", {"city": "Paris", "days": 2}), ("get_time", {"zone": "Europe/Paris", "options": {"clock": "24h"}})]
RESULTS = {"get_weather": "sunny, 21°C", "get_time": "14:05"}
FINAL = "It is sunny and 21°C in Paris, where it is 14:05."
TOOL_FINISH = {"openai": "tool_calls", "claude": "tool_use", "gemini": "STOP", "ollama": "stop"}
NATIVE_KEYS = {"tools", "tool_choice", "toolConfig", "functionDeclarations", "parallel_tool_calls", "tool_calls",
               "tool_call_id", "tool_name", "functionCall", "functionResponse", "function_call"}


@dataclass
class Turn:
    text: str
    calls: list[tuple[str | None, str, dict[str, Any]]]  # (id, name, arguments)
    finish: str | None


# ---------------------------------------------------------------- one driver per client SDK


class OpenAIClient:
    def __init__(self, proxy_url: str, model: str) -> None:
        self.sdk = openai.AsyncOpenAI(base_url=proxy_url + "/compat_mode/v1", api_key=ACCESS_KEY, max_retries=0)
        self.model = model
        self.tools = [{"type": "function", "function": t} for t in TOOLS]
        self.messages: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]

    async def send(self, stream: bool) -> Turn:
        kwargs = dict(model=self.model, messages=self.messages, tools=self.tools)
        if stream:
            text, finish, calls = "", None, {}
            async for chunk in await self.sdk.chat.completions.create(stream=True, **kwargs):
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
                for tc in choice.delta.tool_calls or []:
                    entry = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                    entry["id"] = entry["id"] or tc.id
                    entry["name"] += (tc.function.name or "") if tc.function else ""
                    entry["arguments"] += (tc.function.arguments or "") if tc.function else ""
            found = [(c["id"], c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())]
        else:
            resp = await self.sdk.chat.completions.create(**kwargs)
            message, finish = resp.choices[0].message, resp.choices[0].finish_reason
            text = message.content or ""
            found = [(t.id, t.function.name, json.loads(t.function.arguments)) for t in message.tool_calls or []]
        self.messages.append({"role": "assistant", "content": text or None, "tool_calls": [
            {"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}} for i, n, a in found]} if found
            else {"role": "assistant", "content": text})
        return Turn(text, found, finish)

    def add_results(self, turn: Turn) -> None:
        self.messages += [{"role": "tool", "tool_call_id": i, "content": RESULTS[n]} for i, n, _ in turn.calls]

    async def close(self) -> None:
        await self.sdk.close()


class ClaudeClient:
    def __init__(self, proxy_url: str, model: str) -> None:
        self.sdk = anthropic.AsyncAnthropic(base_url=proxy_url + "/compat_mode", api_key=ACCESS_KEY, max_retries=0)
        self.model = model
        self.tools = [{"name": t["name"], "description": t["description"], "input_schema": t["parameters"]} for t in TOOLS]
        self.messages: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]

    async def send(self, stream: bool) -> Turn:
        kwargs = dict(model=self.model, max_tokens=1024, tools=self.tools, messages=self.messages)
        if stream:
            async with self.sdk.messages.stream(**kwargs) as s:
                msg = await s.get_final_message()
        else:
            msg = await self.sdk.messages.create(**kwargs)
        blocks = [b for b in msg.content if b.type in ("text", "tool_use")]
        self.messages.append({"role": "assistant", "content": [
            {"type": "text", "text": b.text} if b.type == "text" else {"type": "tool_use", "id": b.id, "name": b.name, "input": b.input}
            for b in blocks]})
        text = "".join(b.text for b in blocks if b.type == "text")
        return Turn(text, [(b.id, b.name, b.input) for b in blocks if b.type == "tool_use"], msg.stop_reason)

    def add_results(self, turn: Turn) -> None:
        self.messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": i, "content": RESULTS[n]} for i, n, _ in turn.calls]})

    async def close(self) -> None:
        await self.sdk.close()


class GeminiClient:
    def __init__(self, proxy_url: str, model: str) -> None:
        self.sdk = genai.Client(api_key=ACCESS_KEY, http_options=gtypes.HttpOptions(base_url=proxy_url + "/compat_mode"))
        self.model = model
        self.config = gtypes.GenerateContentConfig(
            tools=[gtypes.Tool(function_declarations=[
                gtypes.FunctionDeclaration(name=t["name"], description=t["description"], parameters_json_schema=t["parameters"])
                for t in TOOLS])],
            automatic_function_calling=gtypes.AutomaticFunctionCallingConfig(disable=True),
        )
        self.contents = [gtypes.Content(role="user", parts=[gtypes.Part.from_text(text=QUESTION)])]

    async def send(self, stream: bool) -> Turn:
        kwargs = dict(model=self.model, contents=self.contents, config=self.config)
        responses = [r async for r in await self.sdk.aio.models.generate_content_stream(**kwargs)] if stream else [
            await self.sdk.aio.models.generate_content(**kwargs)]
        parts = [p for r in responses for c in r.candidates or [] if c.content for p in c.content.parts or []]
        finish = next((str(c.finish_reason.value) for r in responses for c in r.candidates or [] if c.finish_reason), None)
        self.contents.append(gtypes.Content(role="model", parts=parts))
        text = "".join(p.text for p in parts if p.text)
        return Turn(text, [(p.function_call.id, p.function_call.name, p.function_call.args) for p in parts if p.function_call], finish)

    def add_results(self, turn: Turn) -> None:
        self.contents.append(gtypes.Content(role="user", parts=[
            gtypes.Part(function_response=gtypes.FunctionResponse(id=i, name=n, response={"result": RESULTS[n]}))
            for i, n, _ in turn.calls]))

    async def close(self) -> None:
        await self.sdk.aio.aclose()


class OllamaClient:
    def __init__(self, proxy_url: str, model: str) -> None:
        self.sdk = ollama.AsyncClient(host=proxy_url + "/compat_mode", headers={"Authorization": f"Bearer {ACCESS_KEY}"})
        self.model = model
        self.tools = [{"type": "function", "function": t} for t in TOOLS]
        self.messages: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]

    async def send(self, stream: bool) -> Turn:
        kwargs = dict(model=self.model, messages=self.messages, tools=self.tools)
        if stream:
            chunks = [c async for c in await self.sdk.chat(stream=True, **kwargs)]
        else:
            chunks = [await self.sdk.chat(**kwargs)]
        text = "".join(c.message.content or "" for c in chunks)
        calls = [tc for c in chunks for tc in c.message.tool_calls or []]
        found = [(None, tc.function.name, dict(tc.function.arguments)) for tc in calls]
        self.messages.append({"role": "assistant", "content": text,
                              "tool_calls": [{"function": {"name": n, "arguments": a}} for _, n, a in found]})
        return Turn(text, found, chunks[-1].done_reason)

    def add_results(self, turn: Turn) -> None:
        self.messages += [{"role": "tool", "content": RESULTS[n], "tool_name": n} for _, n, _ in turn.calls]

    async def close(self) -> None:
        await self.sdk.close()


CLIENTS = {"openai": OpenAIClient, "claude": ClaudeClient, "gemini": GeminiClient, "ollama": OllamaClient}


# ---------------------------------------------------------------- what the upstream saw


def native_tool_fields(value: Any, path: str = "$") -> list[str]:
    """Paths of anything in a request body that is a native tool definition, call or result."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in NATIVE_KEYS or (key == "type" and item in ("tool_use", "tool_result")) or (key == "role" and item == "tool"):
                found.append(f"{path}.{key}")
            found += native_tool_fields(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += native_tool_fields(item, f"{path}[{i}]")
    return found


def all_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "\n".join(all_text(v) for v in value.values())
    if isinstance(value, list):
        return "\n".join(all_text(v) for v in value)
    return ""


@pytest.fixture(params=PROTOCOLS, ids=lambda p: f"upstream-{p}")
async def upstream(request, start_upstream):
    if request.param not in ADAPTERS:
        pytest.skip(f"no {request.param} adapter yet")
    return await start_upstream(request.param)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("client_protocol", PROTOCOLS)
async def test_tool_round_trip_through_compat_mode(client_protocol, upstream, stream, start_proxy):
    if client_protocol not in ADAPTERS:
        pytest.skip(f"no {client_protocol} adapter yet")
    proxy = await start_proxy(proxy_config([upstream]))
    client = CLIENTS[client_protocol](proxy.url, f"m-{upstream.protocol}")
    emulator = upstream.emulator
    emulator.script(Reply(text=MODEL_CALLS, chunks=9), Reply(text=FINAL, chunks=4))
    try:
        turn = await client.send(stream)
        assert turn.text == "Let me check both.\n"
        assert [(n, a) for _, n, a in turn.calls] == EXPECTED_CALLS
        assert turn.finish == TOOL_FINISH[client_protocol]
        first = emulator.last.body
        assert native_tool_fields(first) == []
        prompt = all_text(first)
        assert QUESTION in prompt and "<tool_call>" in prompt
        for tool in TOOLS:
            assert f"### {tool['name']}" in prompt and tool["description"] in prompt
        for word in PARAMETER_WORDS + (NESTED_WORDS if client_protocol != "ollama" else []):
            assert word in prompt

        client.add_results(turn)
        final = await client.send(stream)
        assert final.text == FINAL and final.calls == []
        assert len(emulator.received) == 2
        second = emulator.last.body
        assert native_tool_fields(second) == []
        history = all_text(second)
        assert "### get_weather" in history  # tools are still declared on the second turn
        assert '{"name":"get_weather","arguments":{"city":"Paris","days":2}}' in history
        assert '{"name":"get_time","arguments":{"zone":"Europe/Paris","options":{"clock":"24h"}}}' in history
        for call_id, name, _ in turn.calls:
            block = history.split(f'<tool_response name="{name}"', 1)[1].split("</tool_response>", 1)[0]
            assert RESULTS[name] in block
            if call_id and client_protocol != "gemini":
                assert f'id="{call_id}"' in block
    finally:
        await client.close()


@pytest.mark.parametrize("where", ["provider", "group"])
async def test_config_turns_compat_on_without_the_path(where, start_upstream, start_proxy):
    upstream = await start_upstream("openai")
    config = proxy_config([upstream])
    (config["providers"]["openai"] if where == "provider" else config["groups"]["default"])["tool_mode"] = "compat"
    config["groups"]["default"]["prompt_position"] = "user"
    proxy = await start_proxy(config)
    sdk = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=ACCESS_KEY, max_retries=0)
    upstream.emulator.script(Reply(text=MODEL_CALLS))
    try:
        resp = await sdk.chat.completions.create(model="m-openai", messages=[{"role": "user", "content": QUESTION}],
                                                 tools=[{"type": "function", "function": t} for t in TOOLS])
    finally:
        await sdk.close()
    assert [(t.function.name, json.loads(t.function.arguments)) for t in resp.choices[0].message.tool_calls] == EXPECTED_CALLS
    sent = upstream.emulator.last.body
    assert native_tool_fields(sent) == []
    assert [m["role"] for m in sent["messages"]] == ["user"]  # prompt_position = "user": no system prompt added
    assert sent["messages"][0]["content"].startswith(QUESTION + "\n\n# Tools") and "### get_time" in sent["messages"][0]["content"]
