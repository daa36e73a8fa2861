"""Every client protocol × every upstream protocol, streaming and not, through the official SDKs.

The clients are the official SDKs (tests/clients.py); the upstreams are the
emulators in tests/emulators, written from each provider's documentation.
"""

from __future__ import annotations

import pytest

from ccproxyd.protocols import ADAPTERS
from tests.clients import DRIVERS, Call, ToolSpec
from tests.conftest import PROTOCOLS, emulator_class, proxy_config
from tests.emulators.base import Reply, ToolCallScript

WEATHER = ToolSpec("get_weather", "Current weather for a city",
                   {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                     "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"]})
TIME = ToolSpec("get_time", "Current time in a time zone", {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]})

PAIRS = [(c, u) for c in PROTOCOLS for u in PROTOCOLS]


@pytest.fixture(params=PAIRS, ids=[f"{c}-to-{u}" for c, u in PAIRS])
async def pair(request, start_upstream, start_proxy):
    client_protocol, upstream_protocol = request.param
    for p in (client_protocol, upstream_protocol):
        if p not in ADAPTERS or emulator_class(p) is None:
            pytest.skip(f"{p} adapter or emulator not available yet")
    upstream = await start_upstream(upstream_protocol)
    proxy = await start_proxy(proxy_config([upstream]))
    driver = DRIVERS[client_protocol](proxy.url, f"m-{upstream_protocol}")
    yield driver, upstream.emulator
    await driver.close()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_plain_text_and_usage(pair, stream):
    driver, emulator = pair
    emulator.script(Reply(text="The quick brown fox jumps.", chunks=4, input_tokens=31, output_tokens=6))
    result = await driver.chat([("user", "Say something")], stream=stream)
    assert result.text == "The quick brown fox jumps."
    assert result.finish == "stop"
    assert (result.input_tokens, result.output_tokens) == (31, 6)
    assert not result.calls


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_tool_round_trip(pair, stream):
    driver, emulator = pair
    emulator.script(
        Reply(text="", tool_calls=[ToolCallScript("get_weather", {"city": "Paris", "unit": "c"})]),
        Reply(text="It is sunny in Paris."),
    )
    turns = [("user", "Weather in Paris?")]
    first = await driver.chat(turns, tools=[WEATHER, TIME], stream=stream)
    assert first.finish == "tool_calls"
    assert [(c.name, c.arguments) for c in first.calls] == [("get_weather", {"city": "Paris", "unit": "c"})]
    upstream_tools = _tool_names(emulator.last.body)
    assert upstream_tools == ["get_weather", "get_time"]

    turns += [("assistant", first), ("results", [(first.calls[0], "sunny, 21C")])]
    final = await driver.chat(turns, tools=[WEATHER, TIME], stream=stream)
    assert final.text == "It is sunny in Paris."
    assert final.finish == "stop"
    _assert_result_linked(emulator.last.body, "get_weather", "sunny, 21C")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_two_parallel_tool_calls(pair, stream):
    driver, emulator = pair
    emulator.script(Reply(text="", tool_calls=[ToolCallScript("get_weather", {"city": "Oslo"}), ToolCallScript("get_time", {"zone": "Europe/Oslo"})]),
                    Reply(text="done"))
    first = await driver.chat([("user", "weather and time in Oslo")], tools=[WEATHER, TIME], stream=stream)
    assert [(c.name, c.arguments) for c in first.calls] == [("get_weather", {"city": "Oslo"}), ("get_time", {"zone": "Europe/Oslo"})]
    assert first.finish == "tool_calls"
    if first.calls[0].id is not None:
        assert first.calls[0].id != first.calls[1].id
    turns = [("user", "weather and time in Oslo"), ("assistant", first), ("results", [(first.calls[0], "cold"), (first.calls[1], "09:00")])]
    assert (await driver.chat(turns, tools=[WEATHER, TIME], stream=stream)).text == "done"
    _assert_result_linked(emulator.last.body, "get_weather", "cold")
    _assert_result_linked(emulator.last.body, "get_time", "09:00")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_reasoning(pair, stream):
    driver, emulator = pair
    emulator.script(Reply(text="42", reasoning="Six times seven.", reasoning_signature="sig-abc123"))
    result = await driver.chat([("user", "6*7?")], stream=stream, reasoning=True)
    assert result.text == "42"
    if driver.protocol != "claude" or emulator_protocol(emulator) == "claude":
        # a Claude client only gets thinking it can replay: a signature from a Claude upstream
        assert result.reasoning == "Six times seven."


@pytest.mark.parametrize("status", [429, 500])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_upstream_error_in_the_clients_shape(pair, status, stream):
    driver, emulator = pair
    emulator.script(Reply(error_status=status, error_message="upstream refused"))
    with pytest.raises(driver.error_types) as e:
        await driver.chat([("user", "hi")], stream=stream)
    got = getattr(e.value, "status_code", None) or getattr(e.value, "code", None)
    assert got == status  # the upstream's status stands, whatever the two protocols
    assert "upstream refused" in str(e.value)


def emulator_protocol(emulator) -> str:
    return type(emulator).__module__.rsplit(".", 1)[-1]


def _tool_names(body: dict) -> list[str]:
    """Tool names in an upstream request body, whatever its protocol."""
    tools = body.get("tools") or []
    names = []
    for t in tools:
        if "functionDeclarations" in t:
            names += [f["name"] for f in t["functionDeclarations"]]
        elif "function" in t:
            names.append(t["function"]["name"])
        else:
            names.append(t["name"])
    return names


def _assert_result_linked(body: dict, name: str, content: str) -> None:
    """The upstream got the tool result, tied to the call it answers, in its own protocol's terms."""
    text = repr(body)
    assert content in text
    if isinstance(body.get("input"), list):  # Responses: function_call_output.call_id matches a function_call of that name
        calls = {i["call_id"]: i["name"] for i in body["input"] if i.get("type") == "function_call"}
        outputs = [i for i in body["input"] if i.get("type") == "function_call_output"]
        assert any(calls.get(o["call_id"]) == name and content in repr(o["output"]) for o in outputs)
    elif "contents" in body:  # Gemini: functionResponse named after the function
        responses = [p["functionResponse"] for c in body["contents"] for p in c["parts"] if "functionResponse" in p]
        assert any(r["name"] == name and content in repr(r["response"]) for r in responses)
    elif "messages" in body and any(m.get("role") == "tool" for m in body["messages"]):
        tools = [m for m in body["messages"] if m["role"] == "tool"]
        if "tool_name" in tools[0] or not any("tool_call_id" in m for m in tools):  # Ollama
            assert any(m.get("tool_name") == name and content in m["content"] for m in tools)
        else:  # OpenAI: the id must match an earlier call of that name
            calls = {c["id"]: c["function"]["name"] for m in body["messages"] if m["role"] == "assistant" for c in m.get("tool_calls") or []}
            assert any(calls.get(m["tool_call_id"]) == name and content in m["content"] for m in tools)
    else:  # Claude: tool_result.tool_use_id matches a tool_use of that name
        uses = {b["id"]: b["name"] for m in body["messages"] if m["role"] == "assistant" and isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_use"}
        results = [b for m in body["messages"] if m["role"] == "user" and isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_result"]
        assert any(uses.get(r["tool_use_id"]) == name and content in repr(r["content"]) for r in results)
