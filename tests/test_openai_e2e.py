"""The official openai SDK against ccproxyd against the OpenAI emulator."""

from __future__ import annotations

import json

import aiohttp
import openai
import pytest

from tests.conftest import ACCESS_KEY, UPSTREAM_KEY, free_port, proxy_config
from tests.emulators.base import Reply, ToolCallScript

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a zone",
                                      "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}},
]


@pytest.fixture
async def setup(start_upstream, start_proxy):
    upstream = await start_upstream("openai")
    proxy = await start_proxy(proxy_config([upstream]))
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=ACCESS_KEY, max_retries=0)
    yield upstream.emulator, proxy, client
    await client.close()


async def test_text(setup):
    emulator, _, client = setup
    emulator.script(Reply(text="Hi there!", input_tokens=12, output_tokens=4, cached_tokens=3))
    resp = await client.chat.completions.create(model="m-openai", messages=[{"role": "user", "content": "hello"}], temperature=1.7, seed=7, max_tokens=99, stop=["END"])
    assert resp.choices[0].message.content == "Hi there!"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model == "m-openai"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.prompt_tokens_details.cached_tokens) == (12, 4, 3)
    sent = emulator.last
    assert sent.body["model"] == "upstream-openai-model"
    assert (sent.body["temperature"], sent.body["seed"], sent.body["max_tokens"], sent.body["stop"]) == (1.7, 7, 99, ["END"])
    assert sent.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"  # never the client's key


async def test_system_developer_and_multi_turn(setup):
    emulator, _, client = setup
    await client.chat.completions.create(model="m-openai", messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": [{"type": "text", "text": "three"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]},
    ])
    msgs = emulator.last.body["messages"]
    assert msgs[0] == {"role": "system", "content": "be brief"}
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[3]["content"][1]["image_url"]["url"] == "data:image/png;base64,iVBORw0KGgo="
    assert msgs[3]["content"][2]["image_url"]["url"] == "https://example.com/cat.png"


async def test_stream_arrives_in_chunks_with_usage_only_when_asked(setup):
    emulator, _, client = setup
    emulator.script(Reply(text="abcdefghij", chunks=5, input_tokens=8, output_tokens=5))
    stream = await client.chat.completions.create(model="m-openai", messages=[{"role": "user", "content": "x"}], stream=True)
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "abcdefghij"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert not any(c.usage for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert emulator.last.body["stream_options"] == {"include_usage": True}  # always asked upstream

    stream = await client.chat.completions.create(model="m-openai", messages=[{"role": "user", "content": "x"}], stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 8 and chunks[-1].usage.completion_tokens == 5


@pytest.mark.parametrize("stream", [False, True])
async def test_parallel_tool_calls_and_round_trip(setup, stream):
    emulator, _, client = setup
    calls = [ToolCallScript("get_weather", {"city": "Paris"}, id="call_a1"), ToolCallScript("get_time", {"zone": "CET"}, id="call_b2")]
    emulator.script(Reply(text="", tool_calls=calls), Reply(text="Sunny, 14:00"))
    messages = [{"role": "user", "content": "weather and time?"}]
    kwargs = dict(model="m-openai", messages=messages, tools=TOOLS, tool_choice="auto")
    if stream:
        s = await client.chat.completions.create(stream=True, **kwargs)
        got: dict[int, dict] = {}
        finish = None
        async for c in s:
            for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
                entry = got.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = entry["id"] or tc.id
                entry["name"] += tc.function.name or "" if tc.function else ""
                entry["arguments"] += tc.function.arguments or "" if tc.function else ""
            if c.choices and c.choices[0].finish_reason:
                finish = c.choices[0].finish_reason
        result = [(v["id"], v["name"], json.loads(v["arguments"])) for _, v in sorted(got.items())]
    else:
        r = await client.chat.completions.create(**kwargs)
        finish = r.choices[0].finish_reason
        result = [(t.id, t.function.name, json.loads(t.function.arguments)) for t in r.choices[0].message.tool_calls]
    assert finish == "tool_calls"
    assert result == [("call_a1", "get_weather", {"city": "Paris"}), ("call_b2", "get_time", {"zone": "CET"})]
    assert emulator.last.body["tools"][0]["function"]["name"] == "get_weather"
    assert emulator.last.body["tool_choice"] == "auto"

    messages += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}} for i, n, a in result]},
        {"role": "tool", "tool_call_id": "call_a1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b2", "content": "14:00"},
    ]
    r = await client.chat.completions.create(model="m-openai", messages=messages, tools=TOOLS)
    assert r.choices[0].message.content == "Sunny, 14:00"
    sent = emulator.last.body["messages"]
    assert [m.get("tool_call_id") for m in sent if m["role"] == "tool"] == ["call_a1", "call_b2"]


async def test_specific_tool_choice_and_reasoning_content(setup):
    emulator, _, client = setup
    emulator.script(Reply(text="42", reasoning="let me think"))
    r = await client.chat.completions.create(model="m-openai", messages=[{"role": "user", "content": "q"}], tools=TOOLS,
                                             tool_choice={"type": "function", "function": {"name": "get_time"}}, reasoning_effort="high",
                                             max_completion_tokens=500)
    assert r.choices[0].message.content == "42"
    assert r.choices[0].message.model_extra["reasoning_content"] == "let me think"
    body = emulator.last.body
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert body["reasoning_effort"] == "high" and body["max_completion_tokens"] == 500

    s = await client.chat.completions.create(model="m-openai", messages=[{"role": "user", "content": "q"}], stream=True)
    reasoning = "".join([(c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" async for c in s if c.choices])
    assert reasoning == "let me think"


@pytest.mark.parametrize("status,exc", [(429, openai.RateLimitError), (500, openai.InternalServerError), (400, openai.BadRequestError)])
async def test_upstream_errors_keep_status_and_shape(setup, status, exc):
    emulator, _, client = setup
    emulator.script(Reply(error_status=status, error_message="upstream says no"))
    with pytest.raises(exc) as e:
        await client.chat.completions.create(model="m-openai", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == status  # the upstream's status stands
    assert "upstream says no" in e.value.message


async def test_mid_stream_error_reaches_the_sdk(setup):
    emulator, _, client = setup
    emulator.script(Reply(text="partial answer", chunks=3, error_after_start=True, error_message="boom mid-stream"))
    s = await client.chat.completions.create(model="m-openai", messages=[{"role": "user", "content": "x"}], stream=True)
    with pytest.raises(openai.APIError) as e:
        async for _ in s:
            pass
    assert "boom mid-stream" in str(e.value)


async def test_model_list(setup):
    _, proxy, client = setup
    models = await client.models.list()
    assert [m.id for m in models.data] == ["m-openai"]


async def test_model_list_for_unknown_group_is_404(setup):
    _, proxy, _ = setup
    client = openai.AsyncOpenAI(base_url=proxy.url + "/nogroup/v1", api_key=ACCESS_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        await client.models.list()
    assert "group 'nogroup' does not exist" in e.value.message
    await client.close()


async def test_auth(setup):
    _, proxy, _ = setup
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        await client.chat.completions.create(model="m-openai", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["type"] == "authentication_error" and "invalid access key" in e.value.message
    await client.close()
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url + "/v1/models") as r:
            assert r.status == 401 and (await r.json())["error"]["message"] == "missing access key"


@pytest.mark.parametrize("body,status,needle", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b"", 400, "empty"),
    (b'{"messages": []}', 400, "model is required"),
    (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "'nope' is not an alias"),
    (b'{"model": "m-openai", "messages": "hi"}', 400, "messages must be an array"),
    (b'{"model": "m-openai", "messages": [{"role": "user", "content": 5}]}', 400, "messages[0].content must be an array"),
    (b'{"model": "m-openai", "messages": [{"role": "wizard", "content": "x"}]}', 400, "messages[0].role"),
    (b'{"model": "m-openai", "messages": [], "temperature": "hot"}', 400, "temperature must be a number"),
])
async def test_bad_input_gets_a_clear_openai_error(setup, body, status, needle):
    _, proxy, _ = setup
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/chat/completions", data=body, headers={"authorization": f"Bearer {ACCESS_KEY}", "content-type": "application/json"}) as r:
            data = await r.json()
    assert r.status == status
    assert needle in data["error"]["message"]
    assert set(data["error"]) == {"message", "type", "param", "code"}


async def test_body_over_the_limit_is_413(start_upstream, start_proxy):
    upstream = await start_upstream("openai")
    proxy = await start_proxy(proxy_config([upstream], server={"max_body_bytes": 2048}))
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/chat/completions", data=b"{" + b" " * 4096 + b"}", headers={"authorization": f"Bearer {ACCESS_KEY}"}) as r:
            assert r.status == 413
            assert "limit" in (await r.json())["error"]["message"]


async def test_unknown_path_is_404_in_openai_shape(setup):
    _, proxy, _ = setup
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/nonexistent", json={}, headers={"authorization": f"Bearer {ACCESS_KEY}"}) as r:
            assert r.status == 404
            assert "no such endpoint" in (await r.json())["error"]["message"]


async def test_unreachable_upstream_is_502_and_timeout_is_504(start_upstream, start_proxy, aiohttp_server):
    dead = free_port()
    config = proxy_config([])
    config["providers"] = {"dead": {"protocol": "openai", "base_url": f"http://127.0.0.1:{dead}/v1"}}
    config["groups"] = {"default": {"models": {"m": ["dead/x"]}}}
    proxy = await start_proxy(config)
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=ACCESS_KEY, max_retries=0)
    with pytest.raises(openai.APIStatusError) as e:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502 and "unreachable" in e.value.message

    upstream = await start_upstream("openai")
    upstream.emulator.script(Reply(headers_delay=2.0))
    config = proxy_config([upstream])
    config["providers"]["openai"]["timeouts"] = {"first_byte": 0.3}
    proxy = await start_proxy(config)
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=ACCESS_KEY, max_retries=0)
    with pytest.raises(openai.APIStatusError) as e:
        await client.chat.completions.create(model="m-openai", messages=[{"role": "user", "content": "x"}], stream=True)
    assert e.value.status_code == 504
    await client.close()


async def test_response_headers(setup):
    emulator, proxy, _ = setup
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/chat/completions", json={"model": "m-openai", "messages": [{"role": "user", "content": "x"}]},
                          headers={"authorization": f"Bearer {ACCESS_KEY}", "x-request-id": "req-abc"}) as r:
            assert r.status == 200
            assert r.headers["x-request-id"] == "req-abc"
            assert r.headers["x-ccproxy-target"] == "openai/upstream-openai-model"
            assert float(r.headers["x-ccproxy-overhead-ms"]) >= 0
    assert emulator.last.headers["x-request-id"] == "req-abc"
    emulator.script(Reply(error_status=500))
    async with aiohttp.ClientSession() as s:  # errors carry them too
        async with s.post(proxy.url + "/v1/chat/completions", json={"model": "m-openai", "messages": [{"role": "user", "content": "x"}]},
                          headers={"authorization": f"Bearer {ACCESS_KEY}"}) as r:
            assert r.status == 500 and r.headers["x-request-id"]
            assert r.headers["x-ccproxy-target"] == "openai/upstream-openai-model"
            assert float(r.headers["x-ccproxy-overhead-ms"]) >= 0


async def test_root_and_health_need_no_key(setup):
    _, proxy, _ = setup
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.url + "/") as r:
            assert r.status == 200 and await r.text() == "Ollama is running"
        async with s.head(proxy.url + "/") as r:
            assert r.status == 200
        async with s.get(proxy.url + "/healthz") as r:
            assert (await r.json())["status"] == "ok"
