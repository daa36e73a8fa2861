"""The Ollama adapter without the proxy: request/response/stream conversion both ways,
the stream encoder's invariants, the known traps, and the adapter against the
Ollama emulator and the official ``ollama`` SDK over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any, AsyncIterator

import ollama
import orjson
import pytest
from aiohttp import web
from ollama._types import ChatResponse, ListResponse, ShowResponse

from ccproxyd import ir
from ccproxyd.config import Provider
from ccproxyd.errors import BadGateway, ClientError, NotFound, ProxyError, RateLimited, UpstreamError
from ccproxyd.paths import Route
from ccproxyd.protocols.base import ModelInfo, UpstreamTarget
from ccproxyd.protocols.ollama import ADAPTER, OllamaStreamEncoder
from tests.emulators.base import Reply, ToolCallScript
from tests.emulators.ollama import OllamaEmulator
from tests.ir_contract import assert_stream_contract

ROUTE = Route("ollama", "chat")
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 24).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 24).decode()


def target(api_key: str | None = None, base_url: str = "http://127.0.0.1:11434") -> UpstreamTarget:
    return UpstreamTarget(Provider("local", "ollama", base_url), "llama3.2:latest", api_key)


def decode(body: dict[str, Any]) -> ir.Request:
    return ADAPTER.decode_request(body, ROUTE, {})


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def events_of(stream: ir.EventStream) -> list[ir.Event]:
    return [e async for e in stream]


def ndjson(data: bytes) -> list[dict[str, Any]]:
    assert data.endswith(b"\n")
    return [orjson.loads(line) for line in data.splitlines()]


# ================================================================ inbound: client request → IR


def test_stream_defaults_to_true_and_false_is_kept() -> None:
    assert decode(chat_body()).stream is True
    assert decode(chat_body(stream=False)).stream is False


@pytest.mark.parametrize("model", [None, ""])
def test_missing_model_is_a_client_error(model: Any) -> None:
    body = chat_body()
    body["model"] = model
    with pytest.raises(ClientError) as e:
        decode(body)
    assert e.value.param == "model"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": 5}, "model"),
        ({"stream": "yes"}, "stream"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x", "images": PNG}]}, "messages[0].images"),
        ({"messages": [{"role": "user", "content": "x", "images": [5]}]}, "messages[0].images[0]"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": 5}}]}]}, "messages[0].tool_calls[0].function.arguments"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]}, "messages[0].tool_calls[0].function.arguments"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}]}, "messages[0].tool_calls[0].function.name"),
        ({"messages": [{"role": "tool", "content": "x", "tool_name": 3}]}, "messages[0].tool_name"),
        ({"tools": {"name": "f"}}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools[0].function.parameters"),
        ({"options": "hot"}, "options"),
        ({"options": {"temperature": "hot"}}, "options.temperature"),
        ({"options": {"top_k": 1.5}}, "options.top_k"),
        ({"options": {"num_predict": True}}, "options.num_predict"),
        ({"options": {"stop": [1]}}, "options.stop"),
        ({"think": 3}, "think"),
        ({"format": "xml"}, "format"),
    ],
)
def test_wrong_types_name_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ClientError) as e:
        decode(chat_body(**fields))
    assert e.value.param == param
    assert param in e.value.message


def test_leading_system_messages_become_the_system_prompt_later_ones_stay() -> None:
    req = decode(chat_body(messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Use French."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "salut"},
        {"role": "system", "content": "Now use English."},
        {"role": "user", "content": "again"},
    ]))
    assert req.system == [ir.Text("Be brief.\n\nUse French.")]
    assert [m.role for m in req.messages] == ["user", "assistant", "system", "user"]
    assert req.messages[2].parts == [ir.Text("Now use English.")]


def test_tool_calls_and_results_pair_up_without_ids() -> None:
    """Ollama results carry only the tool name: parallel calls to the same tool pair in order,
    and arguments given as a JSON string (an OpenAI habit) are accepted as an object."""
    req = decode(chat_body(messages=[
        {"role": "user", "content": "weather in Paris and Oslo?"},
        {"role": "assistant", "content": "", "thinking": "two cities", "tool_calls": [
            {"function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}}},
            {"function": {"index": 1, "name": "weather", "arguments": '{"city": "Oslo"}'}},
        ]},
        {"role": "tool", "tool_name": "weather", "content": "18C"},
        {"role": "tool", "tool_name": "weather", "content": "4C"},
    ]))
    assistant = req.messages[1]
    assert assistant.parts[0] == ir.Reasoning("two cities")
    calls = [p for p in assistant.parts if isinstance(p, ir.ToolCall)]
    assert [c.arguments for c in calls] == [{"city": "Paris"}, {"city": "Oslo"}]
    assert len({c.id for c in calls}) == 2 and all(c.id for c in calls)
    results = [m.parts[0] for m in req.messages[2:]]
    assert all(isinstance(r, ir.ToolResult) for r in results)
    assert [r.call_id for r in results] == [c.id for c in calls]  # type: ignore[union-attr]
    assert [r.content for r in results] == [[ir.Text("18C")], [ir.Text("4C")]]  # type: ignore[union-attr]


def test_tool_call_ids_from_newer_ollama_are_kept() -> None:
    req = decode(chat_body(messages=[
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_a1", "function": {"name": "f", "arguments": {}}}]},
        {"role": "tool", "tool_name": "f", "tool_call_id": "call_a1", "content": "ok", "images": [PNG]},
    ]))
    assert req.messages[0].parts[0].id == "call_a1"  # type: ignore[union-attr]
    result = req.messages[1].parts[0]
    assert isinstance(result, ir.ToolResult) and result.call_id == "call_a1" and result.name == "f"
    assert result.content == [ir.Text("ok"), ir.Image("image/png", PNG)]


def test_images_are_base64_with_a_sniffed_media_type() -> None:
    req = decode(chat_body(messages=[{"role": "user", "content": "what is this?", "images": [PNG, JPEG, f"data:image/webp;base64,{PNG}"]}]))
    images = req.messages[0].parts[1:]
    assert images == [ir.Image("image/png", PNG), ir.Image("image/jpeg", JPEG), ir.Image("image/webp", PNG)]


@pytest.mark.parametrize(
    ("think", "expected"),
    [
        (True, ir.ReasoningConfig(enabled=True)),
        (False, ir.ReasoningConfig(enabled=False)),
        ("high", ir.ReasoningConfig(enabled=True, effort="high")),
        ("low", ir.ReasoningConfig(enabled=True, effort="low")),
        ("max", ir.ReasoningConfig(enabled=True)),  # Ollama uses the model default for unknown levels
        (None, None),
    ],
)
def test_think_maps_to_reasoning_config(think: Any, expected: ir.ReasoningConfig | None) -> None:
    assert decode(chat_body(think=think)).reasoning == expected


def test_options_format_and_same_protocol_extras() -> None:
    schema = {"title": "City", "type": "object", "properties": {"name": {"type": "string"}}}
    req = decode(chat_body(
        format=schema, keep_alive="10m", logprobs=True,
        options={"temperature": 0.2, "top_p": 0.9, "top_k": 40.0, "seed": 7, "num_predict": 256, "stop": "END", "num_ctx": 8192, "mirostat": 1},
    ))
    assert (req.temperature, req.top_p, req.top_k, req.seed, req.max_tokens, req.stop) == (0.2, 0.9, 40, 7, 256, ["END"])
    assert req.response_format == ir.ResponseFormat("json_schema", schema=schema, name="City")
    assert req.extras == {"ollama": {"keep_alive": "10m", "logprobs": True, "options": {"num_ctx": 8192, "mirostat": 1}}}
    assert decode(chat_body(format="json")).response_format == ir.ResponseFormat("json_object")
    assert decode(chat_body(options={"num_predict": -1})).max_tokens is None  # -1: no limit
    assert decode(chat_body()).tool_choice is None and decode(chat_body()).extras == {}


def test_tools_are_decoded() -> None:
    params = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    req = decode(chat_body(tools=[{"type": "function", "function": {"name": "weather", "description": "Get weather", "parameters": params}}]))
    assert req.tools == [ir.Tool("weather", "Get weather", params)]


# ================================================================ outbound: IR → upstream request


def rich_request(**fields: Any) -> ir.Request:
    call_a = ir.ToolCall("toolu_1", "weather", {"city": "Paris", "days": [1, 2]})
    call_b = ir.ToolCall("toolu_2", "time", {"tz": "UTC"})
    messages = [
        ir.Message("user", [ir.Text("Look:"), ir.Image("image/png", url=f"data:image/png;base64,{PNG}")]),
        ir.Message("assistant", [ir.Reasoning("need tools", signature="sig=="), ir.Text("Checking."), call_a, call_b]),
        ir.Message("user", [
            ir.ToolResult("toolu_1", "weather", [ir.Text("18C"), ir.Image("image/jpeg", JPEG)]),
            ir.ToolResult("toolu_2", "time", [ir.Text("no such zone")], is_error=True),
            ir.Text("Thanks, summarise."),
        ]),
    ]
    base: dict[str, Any] = {
        "model": "alias",
        "messages": messages,
        "system": [ir.Text("You are terse.")],
        "tools": [ir.Tool("weather", "Weather", {"type": "object", "properties": {"city": {"type": "string"}}})],
        "stream": True,
    }
    return ir.Request(**{**base, **fields})


def test_url_headers_and_model_come_from_the_target_only() -> None:
    call = ADAPTER.encode_request(rich_request(), target())
    assert call.url == "http://127.0.0.1:11434/api/chat"
    assert call.headers == {"content-type": "application/json"}
    assert call.body["model"] == "llama3.2:latest" and call.method == "POST"
    keyed = ADAPTER.encode_request(rich_request(), target(api_key="sk-cloud"))
    assert keyed.headers["authorization"] == "Bearer sk-cloud"


@pytest.mark.parametrize("stream", [True, False])
def test_stream_flag_is_always_written(stream: bool) -> None:
    """Ollama streams when ``stream`` is absent: a non-streaming call must say false."""
    call = ADAPTER.encode_request(rich_request(stream=stream), target())
    assert call.body["stream"] is stream and call.stream is stream


def test_tool_arguments_are_sent_as_objects() -> None:
    """Trap: Ollama rejects arguments given as a JSON string."""
    assistant = ADAPTER.encode_request(rich_request(), target()).body["messages"][2]
    assert assistant["role"] == "assistant" and assistant["content"] == "Checking." and assistant["thinking"] == "need tools"
    assert assistant["tool_calls"] == [
        {"id": "toolu_1", "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris", "days": [1, 2]}}},
        {"id": "toolu_2", "function": {"index": 1, "name": "time", "arguments": {"tz": "UTC"}}},
    ]


def test_tool_results_become_tool_messages_in_order_with_their_images() -> None:
    messages = ADAPTER.encode_request(rich_request(), target()).body["messages"]
    assert messages[0] == {"role": "system", "content": "You are terse."}
    assert messages[1] == {"role": "user", "content": "Look:", "images": [PNG]}  # data: URL → bare base64
    assert messages[3:] == [
        {"role": "tool", "content": "18C", "tool_name": "weather", "tool_call_id": "toolu_1", "images": [JPEG]},
        {"role": "tool", "content": "Error: no such zone", "tool_name": "time", "tool_call_id": "toolu_2"},
        {"role": "user", "content": "Thanks, summarise."},
    ]


def test_images_go_bare_and_unfetched_urls_are_refused() -> None:
    req = rich_request(messages=[ir.Message("user", [ir.Image("image/png", data=f"data:image/png;base64,{PNG}")])])
    assert ADAPTER.encode_request(req, target()).body["messages"][1]["images"] == [PNG]
    req = rich_request(messages=[ir.Message("user", [ir.Image(url="https://example.com/cat.png")])])
    with pytest.raises(ClientError):
        ADAPTER.encode_request(req, target())
    assert ADAPTER.inline_images_only is True


@pytest.mark.parametrize(("mode", "sends_tools"), [("auto", True), ("none", False), ("required", True), ("tool", True)])
def test_tool_choice(mode: str, sends_tools: bool) -> None:
    body = ADAPTER.encode_request(rich_request(tool_choice=ir.ToolChoice(mode, "weather" if mode == "tool" else None)), target()).body  # type: ignore[arg-type]
    assert ("tools" in body) is sends_tools
    assert "tool_choice" not in body
    if sends_tools:
        assert body["tools"][0] == {"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


@pytest.mark.parametrize(
    ("reasoning", "think"),
    [
        (None, None),
        (ir.ReasoningConfig(enabled=False), False),
        (ir.ReasoningConfig(), True),
        (ir.ReasoningConfig(effort="high"), "high"),
        (ir.ReasoningConfig(effort="minimal"), "low"),
        (ir.ReasoningConfig(budget_tokens=31999), "high"),
        (ir.ReasoningConfig(budget_tokens=1024), "low"),
    ],
)
def test_reasoning_becomes_think(reasoning: ir.ReasoningConfig | None, think: Any) -> None:
    body = ADAPTER.encode_request(rich_request(reasoning=reasoning), target()).body
    assert body.get("think") == think and ("think" in body) is (think is not None)


def test_sampling_options_and_format() -> None:
    req = rich_request(temperature=0.3, top_p=0.8, top_k=20, seed=1, max_tokens=8192, stop=["###"], response_format=ir.ResponseFormat("json_object"))
    body = ADAPTER.encode_request(req, target()).body
    assert body["options"] == {"temperature": 0.3, "top_p": 0.8, "top_k": 20, "seed": 1, "num_predict": 8192, "stop": ["###"]}
    assert body["format"] == "json"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert ADAPTER.encode_request(rich_request(response_format=ir.ResponseFormat("json_schema", schema)), target()).body["format"] == schema
    assert "options" not in ADAPTER.encode_request(rich_request(), target()).body


def test_only_ollama_extras_are_forwarded() -> None:
    extras = {
        "claude": {"metadata": {"user_id": "u"}, "cache_control": {"type": "ephemeral"}},
        "gemini": {"safetySettings": []},
        "ollama": {"keep_alive": "5m", "options": {"num_ctx": 16384, "temperature": 1.5}},
    }
    body = ADAPTER.encode_request(rich_request(extras=extras, temperature=0.1), target()).body
    assert body["keep_alive"] == "5m"
    assert body["options"] == {"num_ctx": 16384, "temperature": 0.1}  # the IR's own value wins
    text = orjson.dumps(body).decode()
    assert "cache_control" not in text and "safetySettings" not in text and "metadata" not in text


def test_mid_conversation_system_message_is_kept_as_system() -> None:
    req = rich_request(system=[], messages=[ir.Message("user", [ir.Text("a")]), ir.Message("system", [ir.Text("switch")]), ir.Message("user", [ir.Text("b")])])
    assert [m["role"] for m in ADAPTER.encode_request(req, target()).body["messages"]] == ["user", "system", "user"]


def test_same_protocol_round_trip_keeps_the_conversation() -> None:
    body = chat_body(
        stream=False, think="medium", keep_alive=0, format="json",
        options={"temperature": 0.5, "num_predict": 100, "num_ctx": 4096},
        tools=[{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}}],
        messages=[
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "look", "images": [PNG]},
            {"role": "assistant", "content": "", "thinking": "hmm", "tool_calls": [{"id": "call_x", "function": {"index": 0, "name": "f", "arguments": {"q": 1}}}]},
            {"role": "tool", "tool_name": "f", "tool_call_id": "call_x", "content": "done"},
        ],
    )
    sent = ADAPTER.encode_request(decode(body), target()).body
    assert sent["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "look", "images": [PNG]},
        {"role": "assistant", "content": "", "thinking": "hmm", "tool_calls": [{"id": "call_x", "function": {"index": 0, "name": "f", "arguments": {"q": 1}}}]},
        {"role": "tool", "content": "done", "tool_name": "f", "tool_call_id": "call_x"},
    ]
    assert (sent["stream"], sent["think"], sent["keep_alive"], sent["format"], sent["tools"]) == (False, "medium", 0, "json", body["tools"])
    assert sent["options"] == {"temperature": 0.5, "num_predict": 100, "num_ctx": 4096}


# ================================================================ upstream responses → IR


def test_decode_response_with_thinking_text_and_parallel_calls() -> None:
    body = {
        "model": "qwen3", "created_at": "2025-05-27T22:54:57.641643Z", "done": True, "done_reason": "stop",
        "message": {"role": "assistant", "content": "Let me check.", "thinking": "use the tool", "tool_calls": [
            {"id": "call_1", "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "weather", "arguments": '{"city": "Oslo"}'}},
        ]},
        "total_duration": 885095291, "load_duration": 3753500, "prompt_eval_count": 122, "prompt_eval_duration": 328493000,
        "eval_count": 33, "eval_duration": 552222000,
    }
    resp = ADAPTER.decode_response(orjson.dumps(body))
    assert resp.model == "qwen3"
    assert resp.parts[:2] == [ir.Reasoning("use the tool"), ir.Text("Let me check.")]
    calls = resp.parts[2:]
    assert [(c.name, c.arguments) for c in calls] == [("weather", {"city": "Paris"}), ("weather", {"city": "Oslo"})]  # type: ignore[union-attr]
    assert calls[0].id == "call_1" and calls[1].id.startswith("call_")  # type: ignore[union-attr]
    assert resp.finish == ir.Finish("tool_calls", "stop")  # Ollama says stop after tool calls
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (122, 33)
    assert resp.usage.raw is not None and resp.usage.raw["eval_duration"] == 552222000


@pytest.mark.parametrize(
    ("done_reason", "finish"),
    [("stop", ir.Finish("stop", "stop")), ("length", ir.Finish("length", "length")), ("load", ir.Finish("other", "load")),
     ("unload", ir.Finish("other", "unload")), (None, ir.Finish("stop")), ("novel", ir.Finish("other", "novel"))],
)
def test_done_reason_maps_exactly(done_reason: str | None, finish: ir.Finish) -> None:
    body = {"model": "m", "message": {"role": "assistant", "content": "x"}, "done": True, "done_reason": done_reason}
    assert ADAPTER.decode_response(orjson.dumps(body)).finish == finish


def test_counts_go_omits_are_zero() -> None:
    resp = ADAPTER.decode_response(b'{"model":"m","message":{"role":"assistant","content":"x"},"done":true,"eval_count":3}')
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (0, 3)


def test_unusable_response_bodies() -> None:
    with pytest.raises(BadGateway):
        ADAPTER.decode_response(b"<html>oops")
    with pytest.raises(UpstreamError) as e:
        ADAPTER.decode_response(b'{"error":"model crashed"}')
    assert e.value.message == "model crashed"


# ================================================================ upstream streams → IR

STREAM_LINES = [
    {"model": "qwen3", "created_at": "t", "message": {"role": "assistant", "content": "", "thinking": "Think"}, "done": False},
    {"model": "qwen3", "created_at": "t", "message": {"role": "assistant", "content": "", "thinking": "ing…"}, "done": False},
    {"model": "qwen3", "created_at": "t", "message": {"role": "assistant", "content": "Héllo"}, "done": False},
    {"model": "qwen3", "created_at": "t", "message": {"role": "assistant", "content": " there"}, "done": False},
    {"model": "qwen3", "created_at": "t", "message": {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_p", "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}}},
        {"id": "call_o", "function": {"index": 1, "name": "weather", "arguments": {"city": "Oslo"}}},
    ]}, "done": False},
    {"model": "qwen3", "created_at": "t", "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
     "total_duration": 9, "load_duration": 1, "prompt_eval_count": 26, "prompt_eval_duration": 2, "eval_count": 12, "eval_duration": 5},
]
STREAM_BYTES = b"".join(orjson.dumps(line) + b"\n" for line in STREAM_LINES)


@pytest.mark.parametrize("size", [1, 2, 7, 64, len(STREAM_BYTES)])
async def test_decode_stream_any_chunking(size: int) -> None:
    events = await events_of(ADAPTER.decode_stream(pieces(STREAM_BYTES, size)))
    assert_stream_contract(events)
    assert events[0] == ir.ResponseStart(None, "qwen3")
    assert sum(isinstance(e, ir.ToolCallStart) for e in events) == 2  # parallel calls all kept
    resp = await ir.collect(ir.iterate(events))
    assert resp.parts == [
        ir.Reasoning("Thinking…"),
        ir.Text("Héllo there"),
        ir.ToolCall("call_p", "weather", {"city": "Paris"}),
        ir.ToolCall("call_o", "weather", {"city": "Oslo"}),
    ]
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (26, 12)  # input is not lost in streams
    assert resp.finish == ir.Finish("tool_calls", "stop")


@pytest.mark.parametrize(
    ("data", "kind", "message"),
    [
        (STREAM_BYTES[: STREAM_BYTES.index(b"\n") + 1] + b'{"error":"an error was encountered while running the model"}\n', "api_error", "an error was encountered while running the model"),
        (STREAM_BYTES[: STREAM_BYTES.index(b"\n") + 1] + b"not json\n", "bad_gateway", "not JSON"),
        (STREAM_BYTES[: STREAM_BYTES.index(b"\n") + 1] + b"[1]\n", "bad_gateway", "not a JSON object"),
        (STREAM_BYTES[: STREAM_BYTES.rindex(b"\n", 0, -1) + 1], "bad_gateway", "ended before its done line"),
    ],
)
async def test_decode_stream_failures_end_with_one_stream_error(data: bytes, kind: str, message: str) -> None:
    events = await events_of(ADAPTER.decode_stream(pieces(data, 5)))
    assert isinstance(events[-1], ir.StreamError)
    assert events[-1].kind == kind and message in events[-1].message
    assert sum(isinstance(e, (ir.StreamError, ir.Finished)) for e in events) == 1


# ================================================================ IR → client stream


def encode_all(enc: OllamaStreamEncoder, events: list[ir.Event]) -> list[bytes]:
    return [enc.encode(e) for e in events]


def test_stream_encoder_writes_one_line_per_delta_as_it_comes() -> None:
    enc = ADAPTER.stream_encoder(ir.Request("my-alias", []), ROUTE)
    assert enc.content_type == "application/x-ndjson" and enc.begin() == b""
    events: list[ir.Event] = [
        ir.ResponseStart("msg_1", "claude-x"),
        ir.ReasoningStart(), ir.ReasoningDelta("hm"), ir.ReasoningDelta("m"), ir.ReasoningSignature("sig"), ir.ReasoningEnd(),
        ir.TextStart(), ir.TextDelta("Hel"), ir.TextDelta("lo"), ir.TextEnd(),
        ir.Usage(input_tokens=11, output_tokens=7), ir.Finished(ir.Finish("stop", "end_turn")),
    ]
    out = encode_all(enc, events)
    per_delta = [o for e, o in zip(events, out) if isinstance(e, (ir.TextDelta, ir.ReasoningDelta))]
    assert all(o.count(b"\n") == 1 for o in per_delta)  # emitted at once, never buffered
    lines = ndjson(b"".join(out) + enc.end())
    assert [ln["message"].get("thinking") for ln in lines[:2]] == ["hm", "m"]
    assert [ln["message"]["content"] for ln in lines[2:4]] == ["Hel", "lo"]
    assert all(ln["model"] == "my-alias" and ln["done"] is False for ln in lines[:4])
    done = lines[-1]
    assert len(lines) == 5 and done["done"] is True and done["done_reason"] == "stop"
    assert (done["prompt_eval_count"], done["eval_count"]) == (11, 7)
    assert done["total_duration"] >= done["eval_duration"] > 0 and done["prompt_eval_duration"] > 0
    for line in lines:
        assert line["created_at"].endswith("Z")
        datetime.fromisoformat(line["created_at"].replace("Z", "+00:00"))
        ChatResponse.model_validate(line)  # the official SDK parses every line


def test_stream_encoder_sends_each_tool_call_whole_with_object_arguments() -> None:
    enc = OllamaStreamEncoder("alias")
    events: list[ir.Event] = [
        ir.ResponseStart(),
        ir.TextStart(), ir.TextDelta("Checking."), ir.TextEnd(),
        ir.ToolCallStart("toolu_1", "weather"), ir.ToolCallDelta('{"ci'), ir.ToolCallDelta('ty": "Par'), ir.ToolCallDelta('is"}'), ir.ToolCallEnd(),
        ir.ToolCallStart("toolu_2", "time"), ir.ToolCallDelta("{}"), ir.ToolCallEnd(),
        ir.Usage(input_tokens=50), ir.Usage(output_tokens=20), ir.Finished(ir.Finish("tool_calls", "tool_use")),
    ]
    out = encode_all(enc, events)
    assert out[4:7] == [b"", b"", b""]  # held until the call is whole
    lines = ndjson(b"".join(out) + enc.end())
    calls = [ln["message"]["tool_calls"] for ln in lines if "tool_calls" in ln["message"]]
    assert calls == [
        [{"id": "toolu_1", "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}}}],
        [{"id": "toolu_2", "function": {"index": 1, "name": "time", "arguments": {}}}],
    ]
    assert lines[-1]["done_reason"] == "stop" and (lines[-1]["prompt_eval_count"], lines[-1]["eval_count"]) == (50, 20)


@pytest.mark.parametrize(("finish", "word"), [(ir.Finish("length", "max_tokens"), "length"), (ir.Finish("content_filter", "SAFETY"), "stop"), (ir.Finish("other", "load"), "load")])
def test_stream_encoder_done_reason(finish: ir.Finish, word: str) -> None:
    enc = OllamaStreamEncoder("m")
    assert ndjson(enc.encode(ir.Finished(finish)))[0]["done_reason"] == word


def test_stream_encoder_uses_ollama_upstream_timings() -> None:
    enc = OllamaStreamEncoder("m")
    enc.encode(ir.Usage(input_tokens=3, output_tokens=4, raw={"load_duration": 11, "prompt_eval_duration": 22, "eval_duration": 33}))
    done = ndjson(enc.encode(ir.Finished(ir.Finish("stop"))))[0]
    assert (done["load_duration"], done["prompt_eval_duration"], done["eval_duration"]) == (11, 22, 33)


def test_stream_encoder_error_line_ends_the_stream() -> None:
    enc = OllamaStreamEncoder("m")
    enc.encode(ir.TextStart())
    enc.encode(ir.TextDelta("partial"))
    assert ndjson(enc.error(UpstreamError(500, None, "model crashed"))) == [{"error": "model crashed"}]
    assert enc.encode(ir.TextDelta("more")) == b"" and enc.end() == b""
    enc2 = OllamaStreamEncoder("m")
    assert ndjson(enc2.encode(ir.StreamError("api_error", "boom"))) == [{"error": "boom"}]


def test_stream_encoder_end_without_finished_still_closes() -> None:
    enc = OllamaStreamEncoder("m")
    enc.encode(ir.ToolCallStart("c1", "f"))
    enc.encode(ir.ToolCallDelta('{"a": 1}'))
    lines = ndjson(enc.end())
    assert lines[0]["message"]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert lines[1]["done"] is True and enc.end() == b""


# ================================================================ IR → client response, errors, models


def test_encode_response_is_what_the_sdk_expects() -> None:
    resp = ir.Response(
        "msg_9", "upstream-model",
        [ir.Reasoning("plan", signature="s"), ir.Text("Hi"), ir.ToolCall("toolu_1", "f", {"x": [1]}), ir.ToolCall("toolu_2", "g", {})],
        ir.Finish("tool_calls", "tool_use"), ir.Usage(input_tokens=9, output_tokens=4),
    )
    body = ADAPTER.encode_response(resp, ir.Request("alias", []))
    parsed = ChatResponse.model_validate(body)
    assert parsed.model == "alias" and parsed.done and parsed.done_reason == "stop"
    assert parsed.message.content == "Hi" and parsed.message.thinking == "plan"
    assert [(c.function.name, dict(c.function.arguments)) for c in parsed.message.tool_calls or ()] == [("f", {"x": [1]}), ("g", {})]
    assert body["message"]["tool_calls"][1] == {"id": "toolu_2", "function": {"index": 1, "name": "g", "arguments": {}}}
    assert (body["prompt_eval_count"], body["eval_count"]) == (9, 4)
    assert body["created_at"].endswith("Z")


@pytest.mark.parametrize(
    ("err", "status"),
    [
        (ClientError("bad field", param="x"), 400),
        (NotFound("model 'x' not found"), 404),
        (RateLimited("slow down"), 429),
        (UpstreamError(529, "overloaded", "Overloaded"), 503),
        (UpstreamError(422, None, "unprocessable"), 400),
        (BadGateway("upstream unreachable"), 502),
        (ProxyError("internal"), 500),
    ],
)
def test_encode_error_is_ollama_shaped(err: ProxyError, status: int) -> None:
    assert ADAPTER.encode_error(err) == (status, {"error": err.message})


@pytest.mark.parametrize(
    ("status", "body", "kind", "message"),
    [
        (404, b'{"error":"model \'llama9\' not found"}', "not_found", "model 'llama9' not found"),
        (400, b'{"error":{"message":"nested","type":"x"}}', "invalid_request", "nested"),
        (502, b"Bad Gateway\n", "bad_gateway", "Bad Gateway"),
        (500, b"", "api_error", "upstream answered HTTP 500"),
    ],
)
def test_decode_error(status: int, body: bytes, kind: str, message: str) -> None:
    err = ADAPTER.decode_error(status, body)
    assert (err.status, err.kind, err.message) == (status, kind, message)


def test_model_endpoints_parse_with_the_sdk() -> None:
    models = [ModelInfo("gpt-alias", vision=True), ModelInfo("coder", tools=False)]
    listed = ListResponse.model_validate(ADAPTER.encode_model_list(models, Route("ollama", "models")))
    assert [m.model for m in listed.models] == ["gpt-alias", "coder"]
    assert listed.models[0].details is not None and listed.models[0].details.format == "gguf"
    shown = ShowResponse.model_validate(ADAPTER.encode_model_info(models[0]))
    assert shown.capabilities == ["completion", "tools", "vision", "thinking"]
    assert shown.modelinfo is not None and shown.modelinfo["ccproxyd.context_length"] > 0
    assert ADAPTER.encode_model_info(models[1])["capabilities"] == ["completion", "thinking"]
    assert ADAPTER.model_from_body({"model": "a"}) == "a" and ADAPTER.model_from_body({"name": "b"}) == "b"
    assert ADAPTER.model_from_body({}) is None
    assert isinstance(ADAPTER.encode_version()["version"], str)


# ================================================================ against the emulator over HTTP


@pytest.fixture
async def upstream(aiohttp_client: Any) -> tuple[OllamaEmulator, Any]:
    emu = OllamaEmulator(models=("llama3.2:latest",))
    return emu, await aiohttp_client(emu.app)


async def send(client: Any, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return await client.post("/api/chat", data=orjson.dumps(body), headers=headers or {"content-type": "application/json"})


async def test_emulator_streams_by_default(upstream: Any) -> None:
    emu, client = upstream
    emu.script(Reply(text="Hello from the emulator.", chunks=4))
    resp = await send(client, {"model": "llama3.2:latest", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 200 and resp.content_type == "application/x-ndjson"
    events = await events_of(ADAPTER.decode_stream(resp.content.iter_any()))
    assert_stream_contract(events)
    assert sum(isinstance(e, ir.TextDelta) for e in events) >= 4
    assert ir.text_of((await ir.collect(ir.iterate(events))).parts) == "Hello from the emulator."


async def test_adapter_request_accepted_and_stream_decoded(upstream: Any) -> None:
    emu, client = upstream
    emu.script(Reply(text="On it.", reasoning="Two calls needed.", input_tokens=321, output_tokens=45,
                     tool_calls=[ToolCallScript("weather", {"city": "Paris"}), ToolCallScript("weather", {"city": "Oslo"}, id="call_fixed")]))
    call = ADAPTER.encode_request(rich_request(reasoning=ir.ReasoningConfig(budget_tokens=4000), max_tokens=8192), target())
    resp = await send(client, call.body, call.headers)
    assert resp.status == 200, await resp.text()
    events = await events_of(ADAPTER.decode_stream(resp.content.iter_any()))
    assert_stream_contract(events)
    result = await ir.collect(ir.iterate(events))
    calls = [p for p in result.parts if isinstance(p, ir.ToolCall)]
    assert [c.arguments for c in calls] == [{"city": "Paris"}, {"city": "Oslo"}] and calls[1].id == "call_fixed"
    assert result.parts[0] == ir.Reasoning("Two calls needed.") and ir.text_of(result.parts) == "On it."
    assert result.finish == ir.Finish("tool_calls", "stop")
    assert (result.usage.input_tokens, result.usage.output_tokens) == (321, 45)
    sent = emu.last.body
    assert sent["think"] == "medium" and sent["options"]["num_predict"] == 8192
    assert all(isinstance(c["function"]["arguments"], dict) for c in sent["messages"][2]["tool_calls"])


async def test_non_streaming_call_and_response(upstream: Any) -> None:
    emu, client = upstream
    emu.script(Reply(text="Cut off", finish="length", input_tokens=5, output_tokens=2))
    call = ADAPTER.encode_request(rich_request(stream=False), target())
    resp = await send(client, call.body, call.headers)
    assert resp.content_type == "application/json"
    decoded = ADAPTER.decode_response(await resp.read())
    assert decoded.parts == [ir.Text("Cut off")] and decoded.finish == ir.Finish("length", "length")
    assert (decoded.usage.input_tokens, decoded.usage.output_tokens) == (5, 2)


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        ({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1}'}}]}, "arguments"),
        ({"role": "user", "content": "x", "images": [f"data:image/png;base64,{PNG}"]}, "illegal base64"),
        ({"role": "user", "content": "x", "images": ["https://example.com/a.png"]}, "illegal base64"),
        ({"role": "user", "content": [{"type": "text", "text": "x"}]}, "content"),
        ({"role": "developer", "content": "x"}, "role"),
    ],
)
async def test_emulator_catches_the_conversion_traps(upstream: Any, message: dict[str, Any], needle: str) -> None:
    """What a careless encoder would send is refused with Ollama's 400, and decode_error reads it."""
    _, client = upstream
    resp = await send(client, {"model": "llama3.2:latest", "stream": False, "messages": [message]})
    assert resp.status == 400
    err = ADAPTER.decode_error(resp.status, await resp.read())
    assert err.kind == "invalid_request" and needle in err.message


async def test_emulator_errors_status_retry_after_and_mid_stream(upstream: Any) -> None:
    emu, client = upstream
    emu.script(Reply(error_status=429, error_message="too many requests", retry_after="7"), Reply(error_after_start=True, error_message="runner died"))
    body = ADAPTER.encode_request(rich_request(), target()).body
    first = await send(client, body)
    assert first.status == 429 and first.headers["Retry-After"] == "7"
    err = ADAPTER.decode_error(first.status, await first.read())
    assert (err.kind, err.message) == ("rate_limit", "too many requests")
    second = await send(client, body)
    events = await events_of(ADAPTER.decode_stream(second.content.iter_any()))
    assert isinstance(events[0], ir.ResponseStart) and events[-1] == ir.StreamError("api_error", "runner died", 500)
    missing = await send(client, {**body, "model": "nope"})
    assert missing.status == 404 and ADAPTER.decode_error(404, await missing.read()).message == "model 'nope' not found"


async def test_emulator_bearer_key(aiohttp_client: Any) -> None:
    emu = OllamaEmulator(api_key="sk-1")
    client = await aiohttp_client(emu.app)
    assert (await send(client, ADAPTER.encode_request(rich_request(), target()).body)).status == 401
    call = ADAPTER.encode_request(rich_request(stream=False), target(api_key="sk-1"))
    assert (await send(client, call.body, call.headers)).status == 200


async def test_emulator_speaks_what_the_official_sdk_reads(aiohttp_client: Any) -> None:
    emu = OllamaEmulator(models=("llama3.2:latest",))
    emu.script(Reply(text="abc", reasoning="r", tool_calls=[ToolCallScript("f", {"k": "v"})]))
    server = await aiohttp_client(emu.app)
    sdk = ollama.AsyncClient(host=f"http://127.0.0.1:{server.port}")
    try:
        parts = [p async for p in await sdk.chat("llama3.2:latest", [{"role": "user", "content": "hi"}], stream=True)]
        assert "".join(p.message.content or "" for p in parts) == "abc" and parts[-1].done
        assert [c.function.name for p in parts for c in p.message.tool_calls or ()] == ["f"]
        assert [m.model for m in (await sdk.list()).models] == ["llama3.2:latest"]
        assert "tools" in ((await sdk.show("llama3.2:latest")).capabilities or [])
    finally:
        await sdk.close()


# ================================================================ the inbound side as the SDK sees it


def inbound_app(reply: ir.Response) -> web.Application:
    """A minimal Ollama-speaking server made of this adapter only: what an Ollama client gets from ccproxyd."""

    async def chat(request: web.Request) -> web.StreamResponse:
        req = ADAPTER.decode_request(await request.json(), ROUTE, request.headers)
        if not req.stream:
            return web.json_response(ADAPTER.encode_response(reply, req))
        enc = ADAPTER.stream_encoder(req, ROUTE)
        resp = web.StreamResponse(headers={"Content-Type": enc.content_type})
        await resp.prepare(request)
        for event in ir.response_events(reply):
            frame = enc.encode(event)
            if frame:
                await resp.write(frame)
        await resp.write(enc.end())
        return resp

    async def tags(request: web.Request) -> web.Response:
        return web.json_response(ADAPTER.encode_model_list([ModelInfo("alias", vision=True)], Route("ollama", "models")))

    async def show(request: web.Request) -> web.Response:
        name = ADAPTER.model_from_body(await request.json())
        return web.json_response(ADAPTER.encode_model_info(ModelInfo(name or "", vision=True)))

    app = web.Application()
    app.router.add_post("/api/chat", chat)
    app.router.add_get("/api/tags", tags)
    app.router.add_post("/api/show", show)
    return app


async def test_official_sdk_reads_our_stream_response_and_model_endpoints(aiohttp_client: Any) -> None:
    reply = ir.Response("id", "up", [ir.Reasoning("mull"), ir.Text("Answer."), ir.ToolCall("toolu_9", "lookup", {"q": "x"})],
                        ir.Finish("tool_calls", "tool_use"), ir.Usage(input_tokens=40, output_tokens=8))
    server = await aiohttp_client(inbound_app(reply))
    sdk = ollama.AsyncClient(host=f"http://127.0.0.1:{server.port}")
    try:
        parts = [p async for p in await sdk.chat("alias", [{"role": "user", "content": "q"}], stream=True, think=True)]
        assert "".join(p.message.content or "" for p in parts) == "Answer."
        assert "".join(p.message.thinking or "" for p in parts) == "mull"
        assert [dict(c.function.arguments) for p in parts for c in p.message.tool_calls or ()] == [{"q": "x"}]
        assert parts[-1].done and parts[-1].done_reason == "stop" and (parts[-1].prompt_eval_count, parts[-1].eval_count) == (40, 8)
        whole = await sdk.chat("alias", [{"role": "user", "content": "q"}], stream=False)
        assert whole.message.content == "Answer." and whole.model == "alias"
        assert [m.model for m in (await sdk.list()).models] == ["alias"]
        assert "vision" in ((await sdk.show("alias")).capabilities or [])
    finally:
        await sdk.close()


def test_think_false_means_no_thinking_output() -> None:
    req = decode(chat_body(think=False))
    enc = ADAPTER.stream_encoder(req, ROUTE)
    assert enc.encode(ir.ReasoningDelta("secret")) == b""
    assert ndjson(enc.encode(ir.TextDelta("answer")))[0]["message"]["content"] == "answer"
    resp = ir.Response("", "m", [ir.Reasoning("secret"), ir.Text("answer")], ir.Finish("stop"))
    assert "thinking" not in ADAPTER.encode_response(resp, req)["message"]
    assert ADAPTER.encode_response(resp, decode(chat_body()))["message"]["thinking"] == "secret"
