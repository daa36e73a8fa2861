"""The Responses API beyond the matrix: structured output, the stream's event sequence,
bad input, hosted and namespace tools (a Codex-shaped request), stored conversations and
their owners, encrypted reasoning with ``store: false``, and input_tokens."""

from __future__ import annotations

import json

import aiohttp
import openai
import pytest

from tests.conftest import ACCESS_KEY, proxy_config
from tests.emulators.base import Reply, ToolCallScript

OTHER_KEY = "sk-ccproxy-second-access-key"
SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"], "additionalProperties": False}
SHELL = {"type": "function", "name": "shell", "description": "Run a command",
         "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}}, "required": ["command"]}}


async def _proxy(start_upstream, start_proxy, tmp_path, protocol: str, **server):
    upstream = await start_upstream(protocol)
    config = proxy_config([upstream], server={"state_dir": str(tmp_path), **server})
    config["keys"] = [{"name": "tests", "key": ACCESS_KEY}, {"name": "other", "key": OTHER_KEY}]
    proxy = await start_proxy(config)
    return upstream.emulator, proxy


def _client(proxy, key: str = ACCESS_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)


async def _post(proxy, body: dict, key: str = ACCESS_KEY, path: str = "/v1/responses") -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + path, json=body, headers={"authorization": f"Bearer {key}"}) as r:
            return r.status, await r.read()


def _sse(raw: bytes) -> list[tuple[str, dict]]:
    out = []
    for frame in raw.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line)
        if "data" in lines:
            out.append((lines.get("event", ""), json.loads(lines["data"])))
    return out


# ---------------------------------------------------------------- structured output


@pytest.mark.parametrize("protocol", ["openai", "claude", "gemini", "ollama", "responses"])
async def test_json_schema_reaches_each_upstreams_structured_output(start_upstream, start_proxy, tmp_path, protocol):
    emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, protocol)
    emulator.script(Reply(text='{"answer": 42}'))
    async with _client(proxy) as client:
        r = await client.responses.create(model=f"m-{protocol}", input="6*7?", store=False,
                                          text={"format": {"type": "json_schema", "name": "answer", "schema": SCHEMA, "strict": True}})
    assert json.loads(r.output_text) == {"answer": 42}
    assert r.text.format.type == "json_schema"
    body = emulator.last.body
    sent = {
        "openai": lambda: body["response_format"]["json_schema"]["schema"],
        "claude": lambda: body["output_config"]["format"]["schema"],
        "gemini": lambda: body["generationConfig"].get("responseJsonSchema") or body["generationConfig"]["responseSchema"],
        "ollama": lambda: body["format"],
        "responses": lambda: body["text"]["format"]["schema"],
    }[protocol]()
    assert sent["properties"]["answer"]["type"] in ("integer", "INTEGER")


# ---------------------------------------------------------------- the stream


async def test_stream_events_are_the_documented_sequence(start_upstream, start_proxy, tmp_path):
    emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "claude")
    emulator.script(Reply(text="Let me look.", reasoning="Need weather.", reasoning_signature="sig-1",
                          tool_calls=[ToolCallScript("get_weather", {"city": "Oslo"})], input_tokens=50, output_tokens=12))
    status, raw = await _post(proxy, {"model": "m-claude", "input": "weather in Oslo?", "stream": True, "tools": [SHELL | {"name": "get_weather"}],
                                      "reasoning": {"effort": "low", "summary": "auto"}, "include": ["reasoning.encrypted_content"]})
    assert status == 200
    events = _sse(raw)
    assert [e for e, d in events] == [d["type"] for e, d in events]
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    kinds = [e for e, _ in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert kinds[2:] == [
        "response.output_item.added", "response.reasoning_summary_part.added", *["response.reasoning_summary_text.delta"] * kinds.count("response.reasoning_summary_text.delta"),
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", *["response.output_text.delta"] * kinds.count("response.output_text.delta"),
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", *["response.function_call_arguments.delta"] * kinds.count("response.function_call_arguments.delta"),
        "response.function_call_arguments.done", "response.output_item.done", "response.completed",
    ]
    done = [d["item"] for e, d in events if e == "response.output_item.done"]
    assert [i["type"] for i in done] == ["reasoning", "message", "function_call"]
    assert [d["output_index"] for e, d in events if e == "response.output_item.added"] == [0, 1, 2]
    assert done[0]["summary"] == [{"type": "summary_text", "text": "Need weather."}] and done[0]["encrypted_content"]
    final = events[-1][1]["response"]
    assert final["status"] == "completed" and final["output"] == done
    assert final["usage"]["input_tokens"] == 50 and final["usage"]["output_tokens"] == 12
    assert "cached_tokens" in final["usage"]["input_tokens_details"] and "reasoning_tokens" in final["usage"]["output_tokens_details"]


async def test_usage_details_reach_the_client(start_upstream, start_proxy, tmp_path):
    emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "openai")
    emulator.script(Reply(text="ok", input_tokens=100, output_tokens=20, cached_tokens=64, reasoning_tokens=7))
    async with _client(proxy) as client:
        async with client.responses.stream(model="m-openai", input="hi", store=False) as s:
            r = await s.get_final_response()
    assert r.usage.input_tokens_details.cached_tokens == 64
    assert r.usage.output_tokens_details.reasoning_tokens == 7
    assert r.usage.total_tokens == 120


@pytest.mark.parametrize("stream", [False, True])
async def test_max_tokens_stop_is_incomplete(start_upstream, start_proxy, tmp_path, stream):
    emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "gemini")
    emulator.script(Reply(text="cut sh", finish="length"))
    status, raw = await _post(proxy, {"model": "m-gemini", "input": "long story", "max_output_tokens": 3, "stream": stream, "store": False})
    body = _sse(raw)[-1][1]["response"] if stream else json.loads(raw)
    if stream:
        assert _sse(raw)[-1][0] == "response.incomplete"
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_failure_after_the_first_byte_is_response_failed(start_upstream, start_proxy, tmp_path):
    emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "openai")
    emulator.script(Reply(text="partial answer here", error_after_start=True, error_message="upstream broke"))
    status, raw = await _post(proxy, {"model": "m-openai", "input": "hi", "stream": True, "store": False})
    assert status == 200
    kind, data = _sse(raw)[-1]
    assert kind == "response.failed"
    assert data["response"]["status"] == "failed"
    assert "upstream broke" in data["response"]["error"]["message"]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"model": "m-openai", "input": 5}, "input", "must be a string or an array"),
    ({"input": "hi"}, "model", "model is required"),
    ({"model": "m-openai", "input": [{"type": "message", "role": "robot", "content": "x"}]}, "input[0].role", "robot"),
    ({"model": "m-openai", "input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0].type", "input_audio"),
    ({"model": "m-openai", "input": [{"type": "item_reference", "id": "msg_x"}]}, "input[0].id", "previous_response_id"),
    ({"model": "m-openai", "input": "x", "reasoning": {"effort": "huge"}}, "reasoning.effort", "huge"),
    ({"model": "m-openai", "input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type", "yaml"),
    ({"model": "m-openai", "input": "x", "tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search"}}, "tool_choice", "web_search"),
    ({"model": "m-openai", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-abc"}]}]},
     "input[0].content[0].file_data", "file_id"),
    ({"model": "m-openai", "input": [{"role": "user", "content": [{"type": "input_file", "file_data": "data:text/plain;base64,!!"}]}]},
     "input[0].content[0].file_data", "not valid base64"),
])
async def test_bad_input_gets_a_clear_400(start_upstream, start_proxy, tmp_path, body, param, words):
    emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "openai")
    async with _client(proxy) as client:
        with pytest.raises(openai.BadRequestError) as e:
            await client.responses.create(**body)
    assert e.value.body["param"] == param
    assert words in e.value.body["message"]
    assert not emulator.received


async def test_text_file_and_image_inputs(start_upstream, start_proxy, tmp_path):
    emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "claude")
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
    async with _client(proxy) as client:
        await client.responses.create(model="m-claude", store=False, input=[{"role": "user", "content": [
            {"type": "input_text", "text": "What is in these?"},
            {"type": "input_file", "filename": "notes.txt", "file_data": "data:text/plain;base64,aGVsbG8gbm90ZXM="},
            {"type": "input_image", "image_url": f"data:image/png;base64,{png}"}]}])
    blocks = emulator.last.body["messages"][0]["content"]
    assert blocks[0]["text"] == "What is in these?"
    assert "hello notes" in blocks[1]["text"] and "notes.txt" in blocks[1]["text"]
    assert blocks[2]["source"] == {"type": "base64", "media_type": "image/png", "data": png}


async def test_hosted_tools_reach_a_responses_upstream(start_upstream, start_proxy, tmp_path):
    emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "responses")
    async with _client(proxy) as client:
        await client.responses.create(model="m-responses", input="news?", store=False, tools=[{"type": "web_search"}, SHELL],
                                      tool_choice={"type": "web_search"})
    body = emulator.last.body
    assert {"type": "web_search"} in body["tools"]
    assert body["tool_choice"] == {"type": "web_search"}
    assert body["store"] is False and body["include"] == ["reasoning.encrypted_content"]


# ---------------------------------------------------------------- Codex


CODEX_TOOLS = [
    SHELL,
    {"type": "namespace", "name": "mcp__files", "description": "File tools", "tools": [
        {"type": "function", "name": "read", "description": "Read a file", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}]},
    {"type": "web_search"},
]


@pytest.mark.parametrize("stream", [False, True])
async def test_codex_shaped_request_to_chat_completions(start_upstream, start_proxy, tmp_path, stream):
    emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "openai")
    emulator.script(Reply(text="", reasoning="Read it first.", tool_calls=[ToolCallScript("mcp__files__read", {"path": "a.txt"}, "call_r1")]),
                    Reply(text="It says hello."))
    base = {"model": "m-openai", "instructions": "You are Codex.", "store": False, "stream": stream, "parallel_tool_calls": True,
            "reasoning": {"effort": "medium", "summary": "auto"}, "include": ["reasoning.encrypted_content"], "prompt_cache_key": "conv-1",
            "tools": CODEX_TOOLS, "tool_choice": "auto"}
    turn = [{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "sandbox: read-only"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "what is in a.txt?"}]}]
    async with _client(proxy) as client:
        if stream:
            async with client.responses.stream(input=turn, **{k: v for k, v in base.items() if k != "stream"}) as s:
                first = await s.get_final_response()
        else:
            first = await client.responses.create(input=turn, **base)
        up = emulator.last.body
        assert [t["function"]["name"] for t in up["tools"]] == ["shell", "mcp__files__read"]  # web_search dropped
        assert up["messages"][:2] == [{"role": "system", "content": "You are Codex.\n\nsandbox: read-only"},
                                      {"role": "user", "content": "what is in a.txt?"}]
        assert "prompt_cache_key" not in up or up["prompt_cache_key"] == "conv-1"
        call = next(i for i in first.output if i.type == "function_call")
        assert (call.name, call.namespace, json.loads(call.arguments)) == ("read", "mcp__files", {"path": "a.txt"})
        reasoning = next(i for i in first.output if i.type == "reasoning")
        assert reasoning.encrypted_content and reasoning.summary[0].text == "Read it first."

        replay = turn + [i.model_dump(exclude_none=True, exclude={"status"}) for i in first.output] + [
            {"type": "function_call_output", "call_id": call.call_id, "output": "hello"}]
        second = await client.responses.create(input=replay, **{**base, "stream": False})
    assert second.output_text == "It says hello."
    up = emulator.last.body
    assistant = next(m for m in up["messages"] if m["role"] == "assistant")
    assert assistant["tool_calls"][0]["function"]["name"] == "mcp__files__read"
    assert assistant["reasoning_content"] == "Read it first."  # the thinking an OpenAI-compatible server needs back
    tool = next(m for m in up["messages"] if m["role"] == "tool")
    assert (tool["tool_call_id"], tool["content"]) == (call.call_id, "hello")


# ---------------------------------------------------------------- state


async def test_previous_response_id_continues_through_claude(start_upstream, start_proxy, tmp_path):
    emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "claude")
    emulator.script(Reply(text="", reasoning="Check the weather tool.", reasoning_signature="sig-claude-1",
                          tool_calls=[ToolCallScript("get_weather", {"city": "Paris"})]),
                    Reply(text="Sunny in Paris."))
    tools = [SHELL | {"name": "get_weather"}]
    async with _client(proxy) as client:
        first = await client.responses.create(model="m-claude", input="weather in Paris?", tools=tools, reasoning={"effort": "low"})
        call = next(i for i in first.output if i.type == "function_call")
        second = await client.responses.create(model="m-claude", previous_response_id=first.id, tools=tools, reasoning={"effort": "low"},
                                               input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
        assert second.output_text == "Sunny in Paris."
        got = await client.responses.retrieve(second.id)
        assert got.id == second.id and got.output_text == "Sunny in Paris."
    messages = emulator.last.body["messages"]
    assert messages[0] == {"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]} or messages[0]["content"] == "weather in Paris?"
    thinking, use = messages[1]["content"][0], messages[1]["content"][1]
    assert (thinking["type"], thinking["signature"]) == ("thinking", "sig-claude-1")
    assert use["type"] == "tool_use" and use["id"] == call.call_id
    assert messages[2]["content"][0]["tool_use_id"] == call.call_id


async def test_store_false_reasoning_round_trips_through_claude(start_upstream, start_proxy, tmp_path):
    emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "claude")
    emulator.script(Reply(text="", reasoning="Think.", reasoning_signature="sig-claude-2", tool_calls=[ToolCallScript("get_weather", {"city": "Rome"})]),
                    Reply(text="Warm."))
    args = {"model": "m-claude", "store": False, "tools": [SHELL | {"name": "get_weather"}], "reasoning": {"effort": "low"},
            "include": ["reasoning.encrypted_content"]}
    async with _client(proxy) as client:
        first = await client.responses.create(input="Rome?", **args)
        call = next(i for i in first.output if i.type == "function_call")
        replay = [{"role": "user", "content": "Rome?"}, *[i.model_dump(exclude_none=True, exclude={"status"}) for i in first.output],
                  {"type": "function_call_output", "call_id": call.call_id, "output": "25C"}]
        second = await client.responses.create(input=replay, **args)
        assert second.output_text == "Warm."
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(first.id)  # store: false keeps nothing
    assistant = emulator.last.body["messages"][1]["content"]
    assert assistant[0] == {"type": "thinking", "thinking": "Think.", "signature": "sig-claude-2"}


async def test_another_key_cannot_read_or_continue_a_stored_response(start_upstream, start_proxy, tmp_path):
    emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "openai")
    async with _client(proxy) as mine, _client(proxy, OTHER_KEY) as theirs:
        first = await mine.responses.create(model="m-openai", input="secret plan")
        assert (await mine.responses.retrieve(first.id)).id == first.id
        with pytest.raises(openai.NotFoundError):
            await theirs.responses.retrieve(first.id)
        with pytest.raises(openai.NotFoundError) as e:
            await theirs.responses.create(model="m-openai", input="and?", previous_response_id=first.id)
        assert e.value.body["code"] == "previous_response_not_found"
        assert e.value.body["param"] == "previous_response_id"
        with pytest.raises(openai.NotFoundError):
            await theirs.responses.delete(first.id)
        await mine.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            await mine.responses.retrieve(first.id)
    assert len(emulator.received) == 1


async def test_unknown_previous_response_id_is_openais_404(start_upstream, start_proxy, tmp_path):
    _emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "openai")
    status, raw = await _post(proxy, {"model": "m-openai", "input": "hi", "previous_response_id": "resp_nope"})
    assert status == 404
    assert json.loads(raw) == {"error": {"message": "Previous response with id 'resp_nope' not found.", "type": "invalid_request_error",
                                         "param": "previous_response_id", "code": "previous_response_not_found"}}


async def test_streamed_response_is_stored_too(start_upstream, start_proxy, tmp_path):
    emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "ollama")
    emulator.script(Reply(text="First answer."), Reply(text="Second answer."))
    async with _client(proxy) as client:
        async with client.responses.stream(model="m-ollama", input="one") as s:
            first = await s.get_final_response()
        second = await client.responses.create(model="m-ollama", input="two", previous_response_id=first.id)
        assert (await client.responses.retrieve(first.id)).output_text == "First answer."
    assert second.output_text == "Second answer."
    assert [(m["role"], m["content"]) for m in emulator.last.body["messages"]] == [
        ("user", "one"), ("assistant", "First answer."), ("user", "two")]


async def test_store_off_in_config(start_upstream, start_proxy, tmp_path):
    _emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "openai", conversation_store=False)
    status, raw = await _post(proxy, {"model": "m-openai", "input": "hi", "previous_response_id": "resp_x"})
    assert status == 400 and "conversation_store" in json.loads(raw)["error"]["message"]
    assert not (tmp_path / "conversations.sqlite3").exists()


# ---------------------------------------------------------------- input_tokens


async def test_input_tokens(start_upstream, start_proxy, tmp_path):
    _emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "openai")
    status, raw = await _post(proxy, {"model": "m-openai", "input": "count these words please " * 10}, path="/v1/responses/input_tokens")
    assert status == 200
    body = json.loads(raw)
    assert body["object"] == "response.input_tokens" and body["input_tokens"] > 10


def test_paths():
    from ccproxyd.paths import MethodNotAllowed, Route, parse_path

    assert parse_path("POST", "/v1/responses") == Route("responses", "chat")
    assert parse_path("POST", "/team/compat_mode/v1/responses") == Route("responses", "chat", "team", True)
    assert parse_path("POST", "/v1/responses/input_tokens") == Route("responses", "count_tokens")
    assert parse_path("GET", "/v1/responses/resp_abc") == Route("responses", "stored", item="resp_abc")
    assert parse_path("DELETE", "/team/v1/responses/resp_abc") == Route("responses", "stored", "team", item="resp_abc")
    with pytest.raises(MethodNotAllowed):
        parse_path("PUT", "/v1/responses/resp_abc")


async def test_item_reference_to_a_stored_item(start_upstream, start_proxy, tmp_path):
    emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "claude")
    emulator.script(Reply(text="Blue."), Reply(text="Yes, blue."))
    async with _client(proxy) as client:
        first = await client.responses.create(model="m-claude", input="Favourite colour?")
        message = first.output[0]
        await client.responses.create(model="m-claude", previous_response_id=first.id,
                                      input=[{"type": "item_reference", "id": message.id}, {"role": "user", "content": "Sure?"}])
    texts = [(m["role"], json.dumps(m["content"])) for m in emulator.last.body["messages"]]
    assert [r for r, _ in texts] == ["user", "assistant", "user"]
    assert "Blue." in texts[1][1] and "Sure?" in texts[2][1]
    assert texts[1][1].count("Blue.") == 2  # the stored answer, and the item the reference brings in again


@pytest.mark.parametrize("protocol", ["openai", "claude", "gemini", "ollama", "responses"])
@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstreams_400_reaches_the_sdk_as_400(start_upstream, start_proxy, tmp_path, protocol, stream):
    emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, protocol)
    emulator.script(Reply(error_status=400, error_message="your prompt is malformed upstream"))
    async with _client(proxy) as client:
        with pytest.raises(openai.BadRequestError) as e:
            if stream:
                async with client.responses.stream(model=f"m-{protocol}", input="hi", store=False) as s:
                    await s.get_final_response()
            else:
                await client.responses.create(model=f"m-{protocol}", input="hi", store=False)
    assert "your prompt is malformed upstream" in e.value.body["message"]
    assert e.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize("stream", [False, True])
async def test_custom_tool_is_a_one_string_function_upstream(start_upstream, start_proxy, tmp_path, stream):
    emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "gemini")
    patch = "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch"
    emulator.script(Reply(text="", tool_calls=[ToolCallScript("apply_patch", {"input": patch})]), Reply(text="Patched."))
    tool = {"type": "custom", "name": "apply_patch", "description": "Edit files", "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}}
    first_body = {"model": "m-gemini", "input": "add a.txt", "tools": [tool], "store": False, "stream": stream}
    status, raw = await _post(proxy, first_body)
    output = _sse(raw)[-1][1]["response"]["output"] if stream else json.loads(raw)["output"]
    call = output[0]
    assert (call["type"], call["name"], call["input"]) == ("custom_tool_call", "apply_patch", patch)
    declared = emulator.last.body["tools"][0]["functionDeclarations"][0]
    assert declared["name"] == "apply_patch" and "lark" in declared["description"]
    replay = [{"role": "user", "content": "add a.txt"}, {k: v for k, v in call.items() if k != "status"},
              {"type": "custom_tool_call_output", "call_id": call["call_id"], "output": "Done!"}]
    status, raw = await _post(proxy, {**first_body, "input": replay, "stream": False})
    assert status == 200 and json.loads(raw)["output_text"] == "Patched."
    parts = [p for c in emulator.last.body["contents"] for p in c["parts"]]
    assert any(p.get("functionCall", {}).get("args") == {"input": patch} for p in parts)
    assert any("Done!" in json.dumps(p.get("functionResponse", {})) for p in parts)


@pytest.mark.parametrize("stream", [False, True])
async def test_compat_mode_path(start_upstream, start_proxy, tmp_path, stream):
    """/compat_mode/v1/responses: tools as text upstream, the model's call text back as function_call items."""
    from tests.test_compat_e2e import EXPECTED_CALLS, MODEL_CALLS, QUESTION, TOOLS

    emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "ollama")
    emulator.script(Reply(text=MODEL_CALLS, chunks=7))
    async with openai.AsyncOpenAI(base_url=proxy.url + "/compat_mode/v1", api_key=ACCESS_KEY, max_retries=0) as client:
        args = {"model": "m-ollama", "input": QUESTION, "store": False, "tools": [{"type": "function", **t} for t in TOOLS]}
        if stream:
            async with client.responses.stream(**args) as s:
                r = await s.get_final_response()
        else:
            r = await client.responses.create(**args)
    assert [(i.name, json.loads(i.arguments)) for i in r.output if i.type == "function_call"] == EXPECTED_CALLS
    assert "tools" not in emulator.last.body


async def test_count_tokens_is_forwarded_to_a_responses_upstream(start_upstream, start_proxy, tmp_path):
    emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "responses")
    import anthropic

    client = anthropic.AsyncAnthropic(base_url=proxy.url, api_key=ACCESS_KEY, max_retries=0)
    counted = await client.messages.count_tokens(model="m-responses", system="Be brief.", messages=[{"role": "user", "content": "count me"}])
    await client.close()
    assert emulator.last.path == "/v1/responses/input_tokens"
    assert emulator.last.body["instructions"] == "Be brief." and "stream" not in emulator.last.body
    assert counted.input_tokens == 1000 + len(json.dumps(emulator.last.body["input"])) // 4


async def test_strict_functions_stay_strict_for_a_responses_upstream(start_upstream, start_proxy, tmp_path):
    emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "responses")
    async with _client(proxy) as client:
        await client.responses.create(model="m-responses", input="x", store=False, tools=[
            {**SHELL, "strict": True}, {**SHELL, "name": "loose"},
            {"type": "namespace", "name": "ns", "description": "d", "tools": [{"type": "function", "name": "tight", "strict": True, "parameters": {}}]}])
    assert [(t["name"], t["strict"]) for t in emulator.last.body["tools"]] == [("shell", True), ("loose", False), ("ns__tight", True)]


@pytest.mark.parametrize("client_protocol", ["openai", "claude", "responses"])
async def test_cached_and_reasoning_tokens_of_a_responses_upstream_reach_the_client(start_upstream, start_proxy, tmp_path, client_protocol):
    emulator, proxy = await _proxy(start_upstream, start_proxy, tmp_path, "responses")
    emulator.script(Reply(text="ok", input_tokens=120, output_tokens=30, cached_tokens=100, reasoning_tokens=12))
    status, raw = await {
        "openai": lambda: _post(proxy, {"model": "m-responses", "messages": [{"role": "user", "content": "hi"}]}, path="/v1/chat/completions"),
        "claude": lambda: _post(proxy, {"model": "m-responses", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}, path="/v1/messages"),
        "responses": lambda: _post(proxy, {"model": "m-responses", "input": "hi", "store": False}),
    }[client_protocol]()
    assert status == 200
    usage = json.loads(raw)["usage"]
    if client_protocol == "openai":
        assert usage["prompt_tokens_details"]["cached_tokens"] == 100 and usage["completion_tokens_details"]["reasoning_tokens"] == 12
    elif client_protocol == "claude":
        assert usage["cache_read_input_tokens"] == 100 and usage["input_tokens"] == 20
    else:
        assert usage["input_tokens_details"]["cached_tokens"] == 100 and usage["output_tokens_details"]["reasoning_tokens"] == 12
