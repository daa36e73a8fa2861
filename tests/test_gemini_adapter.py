"""The Gemini adapter: conversions both ways, the stream encoder's invariants, the
known conversion traps, and real bytes from the Gemini emulator (and the
google-genai SDK) through the adapter."""

from __future__ import annotations

import base64
from typing import Any, AsyncIterator

import orjson
import pytest
from aiohttp import web

from ccproxyd import ir
from ccproxyd.protocols import carry
from ccproxyd.config import Provider
from ccproxyd.errors import (
    AuthError,
    ClientError,
    NotFound,
    RateLimited,
    TooLarge,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)
from ccproxyd.paths import Route, parse_path
from ccproxyd.protocols.base import ModelInfo, UpstreamTarget
from ccproxyd.protocols.gemini import ADAPTER
from ccproxyd.protocols.gemini.wire import SKIP_SIGNATURE
from tests.emulators.base import Reply, ToolCallScript
from tests.emulators.gemini import GeminiEmulator, check_request
from tests.ir_contract import assert_stream_contract

SIG = base64.b64encode(b"a real gemini signature").decode()
SIG2 = base64.b64encode(b"another signature").decode()
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake").decode()


def route(model: str = "gemini-2.5-flash", method: str = "generateContent", sse: bool = True) -> Route:
    return parse_path("POST", f"/v1beta/models/{model}:{method}", {"alt": "sse"} if sse else {})


def target(base: str = "http://upstream.test", model: str = "gemini-2.5-flash", key: str | None = "upstream-key") -> UpstreamTarget:
    return UpstreamTarget(Provider("gem", "gemini", base), model, key)


def gemini_meta(sig: str) -> dict[str, dict[str, Any]]:
    return {"gemini": {"thoughtSignature": sig}}


def decode(body: dict[str, Any], model: str = "gemini-2.5-flash") -> ir.Request:
    return ADAPTER.decode_request(body, route(model), {})


def encode(req: ir.Request, model: str = "gemini-2.5-flash") -> dict[str, Any]:
    return ADAPTER.encode_request(req, target(model=model)).body


async def chunked(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def events_of(data: bytes, size: int = 7) -> list[ir.Event]:
    return [e async for e in ADAPTER.decode_stream(chunked(data, size))]


def sse(*objects: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(o) + b"\r\n\r\n" for o in objects)


def sse_objects(data: bytes) -> list[dict[str, Any]]:
    frames = [f for f in data.split(b"\r\n\r\n") if f]
    assert all(f.startswith(b"data: ") for f in frames), frames
    return [orjson.loads(f[len(b"data: ") :]) for f in frames]


def contents_roles(body: dict[str, Any]) -> list[str]:
    return [c["role"] for c in body["contents"]]


# ================================================================ client request → IR


FULL_BODY: dict[str, Any] = {
    "systemInstruction": {"parts": [{"text": "Be brief."}]},
    "contents": [
        {"role": "user", "parts": [{"text": "What is in this picture?"}, {"inlineData": {"mimeType": "image/png", "data": PNG}}]},
        {
            "role": "model",
            "parts": [
                {"text": "Let me think.", "thought": True, "thoughtSignature": SIG2},
                {"text": "Checking the weather."},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": SIG},
                {"functionCall": {"name": "get_time", "args": {"tz": "CET"}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"output": "sunny"}}},
                {"functionResponse": {"name": "get_time", "response": {"error": "no clock"}}},
                {"text": "And tomorrow?"},
            ],
        },
    ],
    "tools": [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather by city",
                    "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING", "nullable": True}}, "required": ["city"]},
                },
                {"name": "get_time"},
            ]
        },
        {"googleSearch": {}},
    ],
    "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
    "generationConfig": {
        "temperature": 0.4,
        "topP": 0.9,
        "topK": 40.0,
        "maxOutputTokens": 1000,
        "stopSequences": ["END"],
        "seed": 7,
        "candidateCount": 1,
        "responseMimeType": "application/json",
        "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": True},
    },
    "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
    "cachedContent": "cachedContents/abc",
}


def test_decode_request_maps_every_field() -> None:
    req = decode(FULL_BODY)
    assert req.model == "gemini-2.5-flash" and req.stream is False
    assert req.system == [ir.Text("Be brief.")]
    assert [m.role for m in req.messages] == ["user", "assistant", "tool", "user"]
    user, model, results, follow_up = req.messages
    assert user.parts[1] == ir.Image(media_type="image/png", data=PNG)
    thought, text, call1, call2 = model.parts
    assert thought == ir.Reasoning("Let me think.", provider_metadata=gemini_meta(SIG2))
    assert text == ir.Text("Checking the weather.")
    assert isinstance(call1, ir.ToolCall) and call1.provider_metadata == gemini_meta(SIG) and call1.arguments == {"city": "Paris"}
    assert isinstance(call2, ir.ToolCall) and call2.provider_metadata is None
    assert call1.id.startswith("call_") and call1.id != call2.id
    ok, failed = results.parts
    assert isinstance(ok, ir.ToolResult) and ok.call_id == call1.id and ok.content == [ir.Text("sunny")] and not ok.is_error
    assert isinstance(failed, ir.ToolResult) and failed.call_id == call2.id and failed.is_error and failed.content == [ir.Text("no clock")]
    assert follow_up.parts == [ir.Text("And tomorrow?")]
    assert [t.name for t in req.tools] == ["get_weather", "get_time"]
    assert req.tools[0].parameters == {"type": "object", "properties": {"city": {"type": ["string", "null"]}}, "required": ["city"]}
    assert req.tool_choice == ir.ToolChoice("tool", "get_weather")
    assert (req.temperature, req.top_p, req.top_k, req.max_tokens, req.stop, req.seed) == (0.4, 0.9, 40, 1000, ["END"], 7)
    assert req.response_format == ir.ResponseFormat("json_object")
    assert req.reasoning == ir.ReasoningConfig(enabled=True, budget_tokens=2048, include_thoughts=True)
    extras = req.extras["gemini"]
    assert extras["safetySettings"] == FULL_BODY["safetySettings"] and extras["cachedContent"] == "cachedContents/abc"
    assert extras["tools"] == [{"googleSearch": {}}] and extras["generationConfig"] == {"candidateCount": 1}


def test_decode_request_accepts_snake_case_and_stream_from_path() -> None:
    body = {
        "system_instruction": {"parts": [{"text": "sys"}]},
        "contents": [{"role": "user", "parts": [{"inline_data": {"mime_type": "image/png", "data": PNG}}]}],
        "generation_config": {"max_output_tokens": 5, "thinking_config": {"include_thoughts": True, "thinking_level": "LOW"}},
        "tool_config": {"function_calling_config": {"mode": "NONE"}},
        "tools": [{"function_declarations": [{"name": "f", "parameters_json_schema": {"type": "object"}}]}],
    }
    req = ADAPTER.decode_request(body, route(method="streamGenerateContent"), {})
    assert req.stream is True and req.system == [ir.Text("sys")] and req.max_tokens == 5
    assert req.messages[0].parts == [ir.Image(media_type="image/png", data=PNG)]
    assert req.reasoning == ir.ReasoningConfig(enabled=True, effort="low", include_thoughts=True)
    assert req.tool_choice == ir.ToolChoice("none") and req.tools[0].parameters == {"type": "object"}


@pytest.mark.parametrize(
    "body, param",
    [
        ({"contents": "hi"}, "contents"),
        ({"contents": [{"role": "user", "parts": [{"text": 5}]}]}, "contents[0].parts[0].text"),
        ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "contents[0].role"),
        ({"contents": [], "generationConfig": {"temperature": "hot"}}, "generationConfig.temperature"),
        ({"contents": [], "generationConfig": {"topK": 1.5}}, "generationConfig.topK"),
        ({"contents": [], "generationConfig": {"thinkingConfig": {"thinkingLevel": "extreme"}}}, "generationConfig.thinkingConfig.thinkingLevel"),
        ({"contents": [], "tools": [{"functionDeclarations": [{"description": "no name"}]}]}, "tools[0].functionDeclarations[0].name"),
        ({"contents": [], "tools": [{"functionDeclarations": [{"name": "f", "parameters": "x"}]}]}, "tools[0].functionDeclarations[0].parameters"),
        ({"contents": [], "toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}}}, "toolConfig.functionCallingConfig.mode"),
        ({"contents": [{"parts": [{"functionResponse": {"response": {}}}]}]}, "contents[0].parts[0].functionResponse.name"),
        ({"contents": [{"parts": [{"functionCall": {"name": "f", "args": [1]}}]}]}, "contents[0].parts[0].functionCall.args"),
        ({"contents": [{"parts": [{"unknownPart": 1}]}]}, "contents[0].parts[0]"),
        ({}, "contents"),
    ],
)
def test_decode_request_rejects_wrong_shapes_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ClientError) as info:
        decode(body)
    assert info.value.param == param
    assert param in info.value.message


def test_decode_request_needs_a_model_in_the_path() -> None:
    with pytest.raises(ClientError) as info:
        ADAPTER.decode_request({"contents": []}, Route("gemini", "chat", model=None, stream=False), {})
    assert info.value.param == "model"


def test_count_tokens_body_unwraps_generate_content_request() -> None:
    body = {"generateContentRequest": {"model": "models/x", "contents": [{"parts": [{"text": "count me"}]}], "systemInstruction": {"parts": [{"text": "s"}]}}}
    req = ADAPTER.decode_request(body, route(method="countTokens"), {})
    assert req.messages[0].parts == [ir.Text("count me")] and req.system == [ir.Text("s")]
    assert ADAPTER.encode_count_tokens(42) == {"totalTokens": 42}


# ================================================================ IR → upstream request


def test_encode_request_url_auth_and_model_from_target() -> None:
    req = ir.Request("client-alias", [ir.Message("user", [ir.Text("hi")])], stream=True)
    call = ADAPTER.encode_request(req, target(model="models/gemini-2.5-pro"))
    assert call.url == "http://upstream.test/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse" and call.stream
    assert call.headers == {"content-type": "application/json", "x-goog-api-key": "upstream-key"}
    req.stream = False
    call = ADAPTER.encode_request(req, target(key=None))
    assert call.url == "http://upstream.test/v1beta/models/gemini-2.5-flash:generateContent" and not call.stream
    assert "x-goog-api-key" not in call.headers and "authorization" not in call.headers
    assert call.body == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def test_only_gemini_extras_reach_a_gemini_upstream() -> None:
    """cache_control, metadata and other protocols' fields must never be sent to Gemini."""
    req = ir.Request(
        "m",
        [ir.Message("user", [ir.Text("hi")])],
        extras={
            "claude": {"metadata": {"user_id": "u"}, "cache_control": {"type": "ephemeral"}, "context_management": {}},
            "openai": {"store": True, "stream_options": {"include_usage": True}},
            "gemini": {"safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}], "_thinkingLevel": True},
        },
    )
    body = encode(req)
    assert set(body) == {"contents", "safetySettings"}
    text = orjson.dumps(body).decode()
    assert "cache_control" not in text and "metadata" not in text and "store" not in text
    assert check_request(body, "gemini-2.5-flash") is None


DIRTY_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "path": {"type": "string", "description": "file path", "default": "."},
        "mode": {"const": "fast"},
        "limit": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 100},
        "tags": {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}, "additionalProperties": {"type": "string"}},
        "edits": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "old": {"type": "string"},
                    "new": {"type": ["string", "null"]},
                    "kind": {"enum": ["replace", "insert"]},
                    "target": {"$ref": "#/$defs/Target"},
                },
                "required": ["old", "kind", "ghost"],
                "additionalProperties": False,
            },
        },
        "level": {"anyOf": [{"type": "integer", "enum": [1, 2, 3]}, {"type": "null"}]},
    },
    "required": ["path", "edits"],
    "$defs": {"Target": {"type": "object", "properties": {"line": {"type": "integer", "minimum": 1}}, "required": ["line"]}},
}


def dirty_tool_request() -> ir.Request:
    return ir.Request("m", [ir.Message("user", [ir.Text("edit")])], tools=[ir.Tool("edit_file", "Edit a file", DIRTY_SCHEMA)])


def test_tool_schemas_are_cleaned_for_gemini_keeping_nested_structure() -> None:
    body = encode(dirty_tool_request())
    params = body["tools"][0]["functionDeclarations"][0]["parameters"]
    assert params == {
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "file path"},
            "mode": {"type": "string", "enum": ["fast"]},
            "limit": {"type": "integer"},
            "tags": {"type": "object"},
            "edits": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "old": {"type": "string"},
                        "new": {"type": "string", "nullable": True},
                        "kind": {"type": "string", "enum": ["replace", "insert"]},
                        "target": {"type": "object", "properties": {"line": {"type": "integer", "minimum": 1}}, "required": ["line"]},
                    },
                    "required": ["old", "kind"],
                },
            },
            "level": {"type": "integer", "enum": ["1", "2", "3"], "nullable": True},
        },
        "required": ["path", "edits"],
    }
    assert check_request(body, "gemini-2.5-flash") is None
    assert DIRTY_SCHEMA["additionalProperties"] is False  # the client's schema is left alone


@pytest.mark.parametrize("keyword", ["$schema", "additionalProperties", "propertyNames", "const", "exclusiveMinimum", "exclusiveMaximum", "default", "$ref", "$defs"])
def test_the_emulator_rejects_the_raw_schema_the_adapter_cleans(keyword: str) -> None:
    """Proof the cleaning test above can fail: the schema as given is refused for each keyword."""
    body = {
        "contents": [{"role": "user", "parts": [{"text": "x"}]}],
        "tools": [{"functionDeclarations": [{"name": "edit_file", "parameters": DIRTY_SCHEMA}]}],
    }
    message = check_request(body, "gemini-2.5-flash") or ""
    assert f'Unknown name "{keyword}"' in message


def test_recursive_refs_end_in_an_opaque_object() -> None:
    tree = {"type": "object", "properties": {"root": {"$ref": "#/definitions/Node"}}, "definitions": {
        "Node": {"type": "object", "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/definitions/Node"}}}}}}
    params = encode(ir.Request("m", [ir.Message("user", [ir.Text("x")])], tools=[ir.Tool("t", "", tree)]))["tools"][0]["functionDeclarations"][0]["parameters"]
    node = params["properties"]["root"]
    assert node["properties"]["name"] == {"type": "string"}
    assert node["properties"]["children"]["items"] == {"type": "object"}


def test_tools_without_parameters_send_none() -> None:
    req = ir.Request("m", [ir.Message("user", [ir.Text("x")])], tools=[ir.Tool("ping", "Ping"), ir.Tool("noop", "", {"type": "object"})])
    body = encode(req)
    assert body["tools"] == [{"functionDeclarations": [{"name": "ping", "description": "Ping"}, {"name": "noop"}]}]
    assert check_request(body, "gemini-2.5-flash") is None
    raw = {"contents": body["contents"], "tools": [{"functionDeclarations": [{"name": "ping", "parameters": {"type": "object", "properties": {}}}]}]}
    assert "should be non-empty for OBJECT type" in (check_request(raw, "gemini-2.5-flash") or "")


def test_json_schema_tools_of_gemini_clients_go_back_as_given() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False, "$defs": {}}
    body = {"contents": [{"parts": [{"text": "x"}]}], "tools": [{"functionDeclarations": [{"name": "f", "parametersJsonSchema": schema}]}]}
    out = encode(decode(body))
    assert out["tools"] == [{"functionDeclarations": [{"name": "f", "parametersJsonSchema": schema}]}]
    assert check_request(out, "gemini-2.5-flash") is None


def test_system_messages_mid_conversation_fold_into_the_system_instruction() -> None:
    req = ir.Request(
        "m",
        [
            ir.Message("user", [ir.Text("one")]),
            ir.Message("assistant", [ir.Text("two")]),
            ir.Message("system", [ir.Text("Reminder: be careful.")]),
            ir.Message("user", [ir.Text("three")]),
        ],
        system=[ir.Text("You are a coder.")],
    )
    body = encode(req)
    assert body["systemInstruction"] == {"parts": [{"text": "You are a coder."}, {"text": "Reminder: be careful."}]}
    assert contents_roles(body) == ["user", "model", "user"]
    assert check_request(body, "gemini-2.5-flash") is None


def parallel_call_history(signature: str | None = None) -> list[ir.Message]:
    """An OpenAI-style history: split assistant messages, one tool message per result."""
    meta = gemini_meta(signature) if signature else None
    return [
        ir.Message("user", [ir.Text("weather and time?")]),
        ir.Message("user", [ir.Text("please")]),
        ir.Message("assistant", [ir.Text("Looking.")]),
        ir.Message("assistant", [ir.ToolCall("call_1", "get_weather", {"city": "Oslo"}, meta), ir.ToolCall("call_2", "get_time", {})]),
        ir.Message("tool", [ir.ToolResult("call_1", "", [ir.Text('{"temp": 3}')])]),
        ir.Message("tool", [ir.ToolResult("call_2", "", [ir.Text("boom")], is_error=True)]),
        ir.Message("user", [ir.Text("thanks")]),
    ]


def test_turns_merge_and_tool_results_become_named_function_responses() -> None:
    body = encode(ir.Request("m", parallel_call_history()))
    assert contents_roles(body) == ["user", "model", "user"]
    assert body["contents"][0]["parts"] == [{"text": "weather and time?"}, {"text": "please"}]
    model_parts = body["contents"][1]["parts"]
    assert model_parts[0] == {"text": "Looking."}
    assert [p["functionCall"]["name"] for p in model_parts[1:]] == ["get_weather", "get_time"]  # the parallel call is kept
    assert body["contents"][2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"temp": 3}, "id": "call_1"}},
        {"functionResponse": {"name": "get_time", "response": {"error": "boom"}, "id": "call_2"}},
        {"text": "thanks"},
    ]
    assert check_request(body, "gemini-2.5-flash") is None


def test_plain_text_results_are_wrapped_as_output() -> None:
    messages = [
        ir.Message("user", [ir.Text("go")]),
        ir.Message("assistant", [ir.ToolCall("toolu_1", "ls", {})]),
        ir.Message("user", [ir.ToolResult("toolu_1", "ls", [ir.Text("a.txt\nb.txt")])]),
    ]
    response = encode(ir.Request("m", messages))["contents"][2]["parts"][0]["functionResponse"]["response"]
    assert response == {"output": "a.txt\nb.txt"}


def test_first_call_of_each_model_turn_carries_a_signature() -> None:
    """Gemini 3 refuses a function-call replay without thoughtSignature; a call from another protocol gets the
    documented sentinel, a Gemini call its own signature, and parallel calls after the first stay unsigned."""
    current_turn = parallel_call_history()[:-1]  # ends on the results: the calls are in the turn Gemini 3 validates
    body = encode(ir.Request("m", current_turn), model="gemini-3-pro-preview")
    calls = [p for p in body["contents"][1]["parts"] if "functionCall" in p]
    assert calls[0]["thoughtSignature"] == SKIP_SIGNATURE and "thoughtSignature" not in calls[1]
    assert check_request(body, "gemini-3-pro-preview") is None

    body = encode(ir.Request("m", parallel_call_history(SIG)[:-1]), model="gemini-3-pro-preview")
    calls = [p for p in body["contents"][1]["parts"] if "functionCall" in p]
    assert calls[0]["thoughtSignature"] == SIG and "thoughtSignature" not in calls[1]

    del calls[0]["thoughtSignature"]
    assert "missing a thought_signature" in (check_request(body, "gemini-3-pro-preview") or "")


def test_images_are_sent_inline_also_from_data_urls_and_tool_results() -> None:
    messages = [
        ir.Message("user", [ir.Image(data=PNG), ir.Image(url=f"data:image/webp;base64,{PNG}")]),
        ir.Message("assistant", [ir.ToolCall("c1", "screenshot", {})]),
        ir.Message("tool", [ir.ToolResult("c1", "screenshot", [ir.Text("here"), ir.Image(media_type="image/jpeg", data=PNG)])]),
    ]
    body = encode(ir.Request("m", messages))
    assert body["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "image/png", "data": PNG}},
        {"inlineData": {"mimeType": "image/webp", "data": PNG}},
    ]
    assert body["contents"][2]["parts"] == [
        {"functionResponse": {"name": "screenshot", "response": {"output": "here"}, "id": "c1"}},
        {"inlineData": {"mimeType": "image/jpeg", "data": PNG}},
    ]
    assert check_request(body, "gemini-2.5-flash") is None


def test_reasoning_is_replayed_only_with_a_gemini_signature() -> None:
    messages = [
        ir.Message("user", [ir.Text("q")]),
        ir.Message("assistant", [
            ir.Reasoning("claude thinking", signature="claude-sig"),
            ir.Reasoning(redacted="opaque"),
            ir.Reasoning("gemini thinking", provider_metadata=gemini_meta(SIG)),
            ir.Text("", provider_metadata=gemini_meta(SIG2)),
            ir.Text(""),
        ]),
        ir.Message("assistant", [ir.Reasoning("unsigned")]),
        ir.Message("user", [ir.Text("next")]),
    ]
    body = encode(ir.Request("m", messages))
    assert body["contents"][1] == {"role": "model", "parts": [
        {"text": "gemini thinking", "thought": True, "thoughtSignature": SIG},
        {"text": "", "thoughtSignature": SIG2},
    ]}
    assert contents_roles(body) == ["user", "model", "user"]


@pytest.mark.parametrize(
    "reasoning, model, extras, expected",
    [
        (ir.ReasoningConfig(effort="high"), "gemini-2.5-flash", {}, {"thinkingBudget": 24576, "includeThoughts": True}),
        (ir.ReasoningConfig(budget_tokens=5000, include_thoughts=False), "gemini-2.5-flash", {}, {"thinkingBudget": 5000}),
        (ir.ReasoningConfig(), "gemini-2.5-flash", {}, {"includeThoughts": True}),
        (ir.ReasoningConfig(enabled=False), "gemini-2.5-flash", {}, {"thinkingBudget": 0}),
        (ir.ReasoningConfig(enabled=False), "gemini-2.5-pro", {}, None),
        (ir.ReasoningConfig(effort="low"), "gemini-3-pro-preview", {"_thinkingLevel": True}, {"thinkingLevel": "low", "includeThoughts": True}),
    ],
)
def test_reasoning_config_becomes_thinking_config(reasoning: ir.ReasoningConfig, model: str, extras: dict, expected: dict | None) -> None:
    req = ir.Request("m", [ir.Message("user", [ir.Text("x")])], reasoning=reasoning, extras={"gemini": extras})
    body = encode(req, model=model)
    assert body.get("generationConfig", {}).get("thinkingConfig") == expected
    assert check_request(body, model) is None


def test_sampling_goes_to_generation_config_and_stop_is_capped_at_five() -> None:
    req = ir.Request(
        "m", [ir.Message("user", [ir.Text("x")])], max_tokens=100, temperature=0.3, top_p=0.8, top_k=20, seed=1,
        stop=[f"s{i}" for i in range(7)],
    )
    gen = encode(req)["generationConfig"]
    assert gen == {"temperature": 0.3, "topP": 0.8, "topK": 20, "maxOutputTokens": 100, "seed": 1, "stopSequences": ["s0", "s1", "s2", "s3", "s4"]}


@pytest.mark.parametrize(
    "choice, expected",
    [
        (ir.ToolChoice("auto"), {"mode": "AUTO"}),
        (ir.ToolChoice("none"), {"mode": "NONE"}),
        (ir.ToolChoice("required"), {"mode": "ANY"}),
        (ir.ToolChoice("tool", "ping"), {"mode": "ANY", "allowedFunctionNames": ["ping"]}),
    ],
)
def test_tool_choice_becomes_function_calling_config(choice: ir.ToolChoice, expected: dict) -> None:
    req = ir.Request("m", [ir.Message("user", [ir.Text("x")])], tools=[ir.Tool("ping", "", {"type": "object", "properties": {"a": {"type": "string"}}})], tool_choice=choice)
    body = encode(req)
    assert body["toolConfig"] == {"functionCallingConfig": expected}
    assert check_request(body, "gemini-2.5-flash") is None


def test_structured_output() -> None:
    base = [ir.Message("user", [ir.Text("x")])]
    gen = encode(ir.Request("m", base, response_format=ir.ResponseFormat("json_object")))["generationConfig"]
    assert gen == {"responseMimeType": "application/json"}
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "additionalProperties": False, "required": ["n"]}
    body = encode(ir.Request("m", base, response_format=ir.ResponseFormat("json_schema", schema, "answer")))
    assert body["generationConfig"] == {"responseMimeType": "application/json", "responseSchema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}
    assert check_request(body, "gemini-2.5-flash") is None


def test_a_gemini_clients_body_survives_the_round_trip() -> None:
    body = {k: v for k, v in FULL_BODY.items() if k != "toolConfig"}
    out = encode(decode(body))
    sent_model = out["contents"][1]["parts"]
    assert sent_model[0] == {"text": "Let me think.", "thought": True, "thoughtSignature": SIG2}
    assert sent_model[2]["thoughtSignature"] == SIG and sent_model[2]["functionCall"]["args"] == {"city": "Paris"}
    responses = [p["functionResponse"] for p in out["contents"][2]["parts"] if "functionResponse" in p]
    assert [(r["name"], r["response"]) for r in responses] == [("get_weather", {"output": "sunny"}), ("get_time", {"error": "no clock"})]
    assert [r["id"] for r in responses] == [p["functionCall"]["id"] for p in sent_model[2:]]
    for key in ("safetySettings", "cachedContent", "systemInstruction"):
        assert out[key] == body[key]
    assert out["tools"][1] == {"googleSearch": {}}
    assert out["generationConfig"]["candidateCount"] == 1 and out["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 2048, "includeThoughts": True}
    assert out["tools"][0]["functionDeclarations"][0]["parameters"] == {"type": "object", "properties": {"city": {"type": "string", "nullable": True}}, "required": ["city"]}
    assert check_request(out, "gemini-3-pro-preview") is None


# ================================================================ upstream response → IR


def gemini_response(parts: list[dict], finish: str = "STOP", usage: dict | None = None) -> bytes:
    return orjson.dumps({
        "candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": 0}],
        "usageMetadata": usage or {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "resp-1",
    })


def test_decode_response_parts_finish_and_usage() -> None:
    usage = {"promptTokenCount": 100, "candidatesTokenCount": 20, "thoughtsTokenCount": 30, "cachedContentTokenCount": 60, "totalTokenCount": 150}
    resp = ADAPTER.decode_response(gemini_response([
        {"text": "plan", "thought": True, "thoughtSignature": SIG2},
        {"text": "Calling."},
        {"functionCall": {"name": "a", "args": {"x": 1}}, "thoughtSignature": SIG},
        {"functionCall": {"name": "b", "args": {}}},
        {"functionCall": {"id": "given-id", "name": "c"}},
    ], usage=usage))
    assert (resp.id, resp.model) == ("resp-1", "gemini-2.5-flash")
    thought, text, a, b, c = resp.parts
    assert thought == ir.Reasoning("plan", provider_metadata=gemini_meta(SIG2)) and text == ir.Text("Calling.")
    assert isinstance(a, ir.ToolCall) and a.provider_metadata == gemini_meta(SIG) and a.arguments == {"x": 1}
    assert isinstance(b, ir.ToolCall) and isinstance(c, ir.ToolCall) and c.id == "given-id" and c.arguments == {}
    assert a.id.startswith("call_") and len({a.id, b.id, c.id}) == 3
    assert resp.finish == ir.Finish("tool_calls", "STOP")  # STOP after calling functions is not a plain stop
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.cached_input_tokens, resp.usage.reasoning_tokens) == (100, 50, 60, 30)
    assert resp.usage.raw == usage


@pytest.mark.parametrize(
    "raw, reason",
    [("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
     ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
     ("MALFORMED_FUNCTION_CALL", "error"), ("OTHER", "other"), ("SOMETHING_NEW", "other")],
)
def test_finish_reasons_map_exactly_and_keep_the_raw_word(raw: str, reason: str) -> None:
    assert ADAPTER.decode_response(gemini_response([{"text": "x"}], raw)).finish == ir.Finish(reason, raw)  # type: ignore[arg-type]


def test_a_blocked_prompt_is_a_content_filter() -> None:
    body = orjson.dumps({"promptFeedback": {"blockReason": "OTHER"}, "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}})
    resp = ADAPTER.decode_response(body)
    assert resp.parts == [] and resp.finish == ir.Finish("content_filter", "OTHER") and resp.usage.input_tokens == 8


def test_a_split_off_text_signature_rejoins_its_text() -> None:
    resp = ADAPTER.decode_response(gemini_response([{"text": "Hello "}, {"text": "world"}, {"text": "", "thoughtSignature": SIG}]))
    assert resp.parts == [ir.Text("Hello world", gemini_meta(SIG))]


@pytest.mark.parametrize(
    "status, body, kind, out_status, retry",
    [
        (429, {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED",
                         "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]}}, "rate_limit", 429, 37.0),
        (400, {"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
                         "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]}}, "authentication", 401, None),
        (400, {"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}, "invalid_request", 400, None),
        (403, {"error": {"code": 403, "message": "denied", "status": "PERMISSION_DENIED"}}, "permission", 403, None),
        (503, {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}, "unavailable", 503, None),
        (504, {"error": {"code": 504, "message": "late", "status": "DEADLINE_EXCEEDED"}}, "timeout", 504, None),
        (500, [{"error": {"code": 500, "message": "in an array", "status": "INTERNAL"}}], "api_error", 500, None),
    ],
)
def test_decode_error(status: int, body: Any, kind: str, out_status: int, retry: float | None) -> None:
    err = ADAPTER.decode_error(status, orjson.dumps(body))
    assert (err.kind, err.status, err.retry_after) == (kind, out_status, retry)
    assert err.message == (body[0] if isinstance(body, list) else body)["error"]["message"]


def test_decode_error_of_a_non_json_body() -> None:
    err = ADAPTER.decode_error(502, b"<html>Bad Gateway</html>")
    assert (err.kind, err.status, err.message) == ("bad_gateway", 502, "<html>Bad Gateway</html>")


# ================================================================ upstream stream → IR


def frame(parts: list[dict], finish: str | None = None, usage: dict | None = None) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    out: dict[str, Any] = {"candidates": [cand], "modelVersion": "gemini-2.5-flash", "responseId": "r1"}
    if usage:
        out["usageMetadata"] = usage
    return out


STREAM = sse(
    frame([{"text": "Think", "thought": True}], usage={"promptTokenCount": 30, "totalTokenCount": 40, "thoughtsTokenCount": 10}),
    frame([{"text": "ing.", "thought": True}], usage={"promptTokenCount": 30, "totalTokenCount": 42, "thoughtsTokenCount": 12}),
    frame([{"text": "Hel"}], usage={"promptTokenCount": 30, "candidatesTokenCount": 1, "totalTokenCount": 43, "thoughtsTokenCount": 12}),
    frame([{"text": "lo"}]),
    frame(
        [{"functionCall": {"name": "a", "args": {"q": "é"}}, "thoughtSignature": SIG}, {"functionCall": {"name": "b", "args": {}}}],
        "STOP",
        {"promptTokenCount": 30, "candidatesTokenCount": 8, "cachedContentTokenCount": 20, "totalTokenCount": 50, "thoughtsTokenCount": 12},
    ),
)


async def test_decode_stream_in_tiny_chunks_with_crlf_frames() -> None:
    events = await events_of(STREAM, size=5)
    assert_stream_contract(events)
    assert events[0] == ir.ResponseStart("r1", "gemini-2.5-flash")
    assert "".join(e.text for e in events if isinstance(e, ir.ReasoningDelta)) == "Thinking."
    assert "".join(e.text for e in events if isinstance(e, ir.TextDelta)) == "Hello"
    starts = [e for e in events if isinstance(e, ir.ToolCallStart)]
    assert [s.name for s in starts] == ["a", "b"] and starts[0].provider_metadata == gemini_meta(SIG) and starts[1].provider_metadata is None
    assert [orjson.loads(e.arguments) for e in events if isinstance(e, ir.ToolCallDelta)] == [{"q": "é"}, {}]
    usage = [e for e in events if isinstance(e, ir.Usage)]
    assert len(usage) == 1 and (usage[0].input_tokens, usage[0].output_tokens, usage[0].cached_input_tokens, usage[0].reasoning_tokens) == (30, 20, 20, 12)
    assert events[-1] == ir.Finished(ir.Finish("tool_calls", "STOP"))


async def test_decode_stream_keeps_part_signatures_on_their_blocks() -> None:
    events = await events_of(sse(frame([{"text": "Hi"}]), frame([{"text": " there", "thoughtSignature": SIG}]), frame([{"text": "", "thoughtSignature": SIG2}], "STOP")))
    assert_stream_contract(events)
    starts = [e for e in events if isinstance(e, ir.TextStart)]
    assert [s.provider_metadata for s in starts] == [None, gemini_meta(SIG), gemini_meta(SIG2)]
    response = await ir.collect(ir.iterate(events))
    assert response.parts == [ir.Text("Hi"), ir.Text(" there", gemini_meta(SIG)), ir.Text("", gemini_meta(SIG2))]


async def test_decode_stream_unparseable_chunk_is_a_stream_error() -> None:
    events = await events_of(sse(frame([{"text": "ok"}])) + b"data: {not json\r\n\r\n")
    assert isinstance(events[-1], ir.StreamError) and events[-1].kind == "bad_gateway" and events[-1].status == 502
    assert any(isinstance(e, ir.TextDelta) for e in events)


async def test_decode_stream_error_frame_is_a_stream_error() -> None:
    error = {"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}}
    events = await events_of(sse(frame([{"text": "ok"}]), error))
    assert events[-1] == ir.StreamError("rate_limit", "Resource has been exhausted", 429)


async def test_decode_stream_of_nothing_is_a_stream_error() -> None:
    events = await events_of(b"")
    assert len(events) == 1 and isinstance(events[0], ir.StreamError)


async def test_decode_stream_accepts_the_json_array_form() -> None:
    body = b"[" + b",\r\n".join(orjson.dumps(frame([{"text": t}])) for t in ("a", "b")) + b",\r\n" + orjson.dumps(frame([{"text": "c"}], "MAX_TOKENS")) + b"]"
    events = await events_of(body, size=4)
    assert_stream_contract(events)
    assert "".join(e.text for e in events if isinstance(e, ir.TextDelta)) == "abc"
    assert events[-1] == ir.Finished(ir.Finish("length", "MAX_TOKENS"))


# ================================================================ IR → Gemini client stream


def client_request(include_thoughts: bool = True, model: str = "my-alias") -> ir.Request:
    return ir.Request(model, [], reasoning=ir.ReasoningConfig(include_thoughts=include_thoughts))


def tool_call_events(call_id: str, name: str, fragments: list[str], meta: dict | None = None) -> list[ir.Event]:
    return [ir.ToolCallStart(call_id, name, meta), *[ir.ToolCallDelta(f) for f in fragments], ir.ToolCallEnd()]


EVENTS: list[ir.Event] = [
    ir.ResponseStart("up-1", "upstream-model"),
    ir.ReasoningStart(), ir.ReasoningDelta("hmm"), ir.ReasoningSignature("claude-signature"), ir.ReasoningEnd(),
    ir.TextStart(), ir.TextDelta("Hel"), ir.TextDelta("lo"), ir.TextEnd(),
    *tool_call_events("call_a", "read", ['{"pa', 'th": "a', '.txt"}'], gemini_meta(SIG)),
    *tool_call_events("call_b", "read", ['{"path": "b.txt"}']),
    ir.Usage(input_tokens=50, output_tokens=20, cached_input_tokens=10, reasoning_tokens=5),
    ir.Finished(ir.Finish("tool_calls", "tool_use")),
]


def test_stream_encoder_sse_invariants() -> None:
    encoder = ADAPTER.stream_encoder(client_request(), route(method="streamGenerateContent"))
    assert encoder.content_type == "text/event-stream" and encoder.begin() == b""
    out = []
    for event in EVENTS:
        data = encoder.encode(event)
        if isinstance(event, (ir.TextDelta, ir.ReasoningDelta)):
            assert data, f"{event} must be sent as it comes"
        out.append(data)
    out.append(encoder.end())
    raw = b"".join(out)
    assert b"[DONE]" not in raw and raw.endswith(b"\r\n\r\n")
    frames = sse_objects(raw)
    parts = [f["candidates"][0]["content"]["parts"] for f in frames]
    # another upstream's signed reasoning is carried back on an empty thought (protocols/carry.py)
    carried = [{"text": "", "thought": True, "thoughtSignature": carry.wrap(ir.Reasoning("hmm", "claude-signature"))}]
    assert parts[:4] == [[{"text": "hmm", "thought": True}], carried, [{"text": "Hel"}], [{"text": "lo"}]]
    assert parts[4] == [
        {"functionCall": {"id": "call_a", "name": "read", "args": {"path": "a.txt"}}, "thoughtSignature": SIG},
        {"functionCall": {"id": "call_b", "name": "read", "args": {"path": "b.txt"}}},
    ]
    assert len(frames) == 5  # parallel calls whole in the one last frame
    for f in frames[:-1]:
        assert "finishReason" not in f["candidates"][0] and "usageMetadata" not in f
    last = frames[-1]
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["usageMetadata"] == {"promptTokenCount": 50, "candidatesTokenCount": 15, "totalTokenCount": 70, "cachedContentTokenCount": 10, "thoughtsTokenCount": 5}
    assert {f["modelVersion"] for f in frames} == {"my-alias"} and {f["responseId"] for f in frames} == {"up-1"}


def test_stream_encoder_json_array_mode_is_one_valid_array() -> None:
    encoder = ADAPTER.stream_encoder(client_request(), route(method="streamGenerateContent", sse=False))
    assert encoder.content_type == "application/json"
    raw = encoder.begin() + b"".join(encoder.encode(e) for e in EVENTS) + encoder.end()
    frames = orjson.loads(raw)
    assert isinstance(frames, list) and len(frames) == 5 and frames[-1]["candidates"][0]["finishReason"] == "STOP"
    assert encoder.end() == b""  # idempotent: a second end adds no second bracket


def test_stream_encoder_hides_thoughts_the_client_did_not_ask_for() -> None:
    encoder = ADAPTER.stream_encoder(client_request(include_thoughts=False), route(method="streamGenerateContent"))
    raw = b"".join(encoder.encode(e) for e in EVENTS) + encoder.end()
    assert all(not p.get("thought") for f in sse_objects(raw) for p in f["candidates"][0]["content"]["parts"])


def test_stream_encoder_text_ending_sends_a_final_frame_with_a_part() -> None:
    """google-genai's chat drops the whole turn when any chunk has empty parts."""
    encoder = ADAPTER.stream_encoder(ir.Request("m", []), route(method="streamGenerateContent"))
    events = [ir.ResponseStart(), ir.TextStart(), ir.TextDelta("hi"), ir.TextEnd(), ir.Usage(input_tokens=3, output_tokens=1), ir.Finished(ir.Finish("length"))]
    frames = sse_objects(b"".join(encoder.encode(e) for e in events) + encoder.end())
    assert [f["candidates"][0]["content"]["parts"] for f in frames] == [[{"text": "hi"}], [{"text": ""}]]
    assert frames[-1]["candidates"][0]["finishReason"] == "MAX_TOKENS" and frames[-1]["usageMetadata"]["promptTokenCount"] == 3


def test_stream_encoder_sends_a_signature_without_text_on_an_empty_part() -> None:
    encoder = ADAPTER.stream_encoder(ir.Request("m", []), route(method="streamGenerateContent"))
    events = [ir.TextStart(), ir.TextDelta("a"), ir.TextEnd(), ir.TextStart(gemini_meta(SIG)), ir.TextEnd(), ir.Finished(ir.Finish("stop", "STOP"))]
    frames = sse_objects(b"".join(encoder.encode(e) for e in events))
    assert frames[1]["candidates"][0]["content"]["parts"] == [{"text": "", "thoughtSignature": SIG}]


@pytest.mark.parametrize(
    "finish, word",
    [(ir.Finish("stop"), "STOP"), (ir.Finish("length", "max_tokens"), "MAX_TOKENS"), (ir.Finish("tool_calls", "tool_use"), "STOP"),
     (ir.Finish("content_filter", "refusal"), "SAFETY"), (ir.Finish("content_filter", "RECITATION"), "RECITATION"),
     (ir.Finish("error", "MALFORMED_FUNCTION_CALL"), "MALFORMED_FUNCTION_CALL"), (ir.Finish("other", "pause_turn"), "OTHER")],
)
def test_stream_encoder_finish_words(finish: ir.Finish, word: str) -> None:
    encoder = ADAPTER.stream_encoder(ir.Request("m", []), route(method="streamGenerateContent"))
    assert sse_objects(encoder.encode(ir.Finished(finish)))[0]["candidates"][0]["finishReason"] == word


@pytest.mark.parametrize("use_sse", [True, False])
def test_stream_encoder_error_frame(use_sse: bool) -> None:
    encoder = ADAPTER.stream_encoder(ir.Request("m", []), route(method="streamGenerateContent", sse=use_sse))
    raw = encoder.begin() + encoder.encode(ir.TextStart()) + encoder.encode(ir.TextDelta("partial"))
    raw += encoder.error(UpstreamError(503, "overloaded", "try later"))
    assert encoder.end() == b"" and encoder.encode(ir.TextDelta("late")) == b""
    frames = sse_objects(raw) if use_sse else orjson.loads(raw)
    assert frames[-1] == {"error": {"code": 503, "message": "try later", "status": "UNAVAILABLE"}}


# ================================================================ IR → Gemini client response, errors, models


def test_encode_response_round_trips_through_the_decoder() -> None:
    resp = ir.Response(
        "r9", "upstream-model",
        [ir.Reasoning("thinking", provider_metadata=gemini_meta(SIG2)), ir.Reasoning(redacted="xx"), ir.Text("Answer"),
         ir.Text("", gemini_meta(SIG)), ir.ToolCall("call_1", "f", {"a": [1, 2]}, gemini_meta(SIG)), ir.ToolCall("call_2", "g", {})],
        ir.Finish("tool_calls", "tool_use"),
        ir.Usage(input_tokens=7, output_tokens=9, reasoning_tokens=2),
    )
    body = ADAPTER.encode_response(resp, client_request(model="alias"))
    assert body["modelVersion"] == "alias" and body["responseId"] == "r9"
    assert body["candidates"][0]["finishReason"] == "STOP"
    assert body["candidates"][0]["content"]["parts"][1] == {"text": "Answer", "thoughtSignature": SIG}
    back = ADAPTER.decode_response(orjson.dumps(body))
    thought, _redacted, _text, _signature, call1, call2 = resp.parts
    assert back.parts == [thought, ir.Text("Answer", gemini_meta(SIG)), call1, call2]  # redacted thinking is Claude's only
    assert back.finish == ir.Finish("tool_calls", "STOP")
    assert (back.usage.input_tokens, back.usage.output_tokens, back.usage.reasoning_tokens) == (7, 9, 2)


def test_encode_response_of_an_empty_answer_still_has_a_part() -> None:
    body = ADAPTER.encode_response(ir.Response("", "m", [], ir.Finish("stop")), ir.Request("alias", []))
    assert body["candidates"][0]["content"]["parts"] == [{"text": ""}] and body["responseId"]
    blocked = ADAPTER.encode_response(ir.Response("", "m", [], ir.Finish("content_filter", "refusal")), ir.Request("alias", []))
    assert "content" not in blocked["candidates"][0] and blocked["candidates"][0]["finishReason"] == "SAFETY"


@pytest.mark.parametrize(
    "err, status, word",
    [
        (ClientError("bad field", param="x"), 400, "INVALID_ARGUMENT"),
        (AuthError("no key"), 401, "UNAUTHENTICATED"),
        (NotFound("no model"), 404, "NOT_FOUND"),
        (TooLarge("big"), 413, "INVALID_ARGUMENT"),
        (RateLimited("slow down"), 429, "RESOURCE_EXHAUSTED"),
        (Unavailable("all down"), 503, "UNAVAILABLE"),
        (UpstreamTimeout("late"), 504, "DEADLINE_EXCEEDED"),
        (UpstreamError(529, "overloaded", "Overloaded"), 503, "UNAVAILABLE"),
        (UpstreamError(500, None, "boom"), 500, "INTERNAL"),
    ],
)
def test_encode_error_uses_googles_shape(err: Any, status: int, word: str) -> None:
    got_status, body = ADAPTER.encode_error(err)
    assert got_status == status
    assert body == {"error": {"code": status, "message": err.message, "status": word}}


def test_encode_error_carries_retry_info() -> None:
    _, body = ADAPTER.encode_error(UpstreamError(429, "rate_limit", "quota", retry_after=12))
    assert body["error"]["details"] == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}]


def test_model_list_shape() -> None:
    body = ADAPTER.encode_model_list([ModelInfo("fast"), ModelInfo("smart")], route())
    assert [m["name"] for m in body["models"]] == ["models/fast", "models/smart"]
    assert body["models"][0]["supportedGenerationMethods"] == ["generateContent", "streamGenerateContent", "countTokens"]
    assert "nextPageToken" not in body


# ================================================================ the emulator validates like Google


def valid_body() -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def with_history(signature: str | None) -> dict[str, Any]:
    call: dict[str, Any] = {"functionCall": {"name": "f", "args": {}}}
    if signature:
        call["thoughtSignature"] = signature
    return {"contents": [
        {"role": "user", "parts": [{"text": "go"}]},
        {"role": "model", "parts": [call]},
        {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"output": 1}}}]},
    ]}


@pytest.mark.parametrize(
    "body, model, fragment",
    [
        ({**valid_body(), "messages": []}, "gemini-2.5-flash", 'Unknown name "messages"'),
        ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "gemini-2.5-flash", "Please use a valid role: user, model."),
        ({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}, "gemini-2.5-flash", "Please use a valid role"),
        ({"contents": [{"role": "user", "parts": []}]}, "gemini-2.5-flash", "contents.parts must not be empty"),
        ({"contents": [{"role": "user", "parts": [{"thought": True}]}]}, "gemini-2.5-flash", "required oneof field 'data'"),
        ({"contents": [{"role": "user", "parts": [{"text": "x", "cache_control": {"type": "ephemeral"}}]}]}, "gemini-2.5-flash", 'Unknown name "cache_control"'),
        ({"contents": [{"role": "user", "parts": [{"functionResponse": {"response": {}}}]}]}, "gemini-2.5-flash", "function_response.name: Name cannot be empty"),
        ({**valid_body(), "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}, "parametersJsonSchema": {}}]}]},
         "gemini-2.5-flash", "mutually exclusive"),
        ({**valid_body(), "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "string", "properties": {"a": {"type": "string"}}}}]}]},
         "gemini-2.5-flash", "only allowed for OBJECT type"),
        ({**valid_body(), "tools": [{"functionDeclarations": [{"name": "bad name/with slash"}]}]}, "gemini-2.5-flash", "Invalid function name"),
        (with_history(None), "gemini-3-pro-preview", "missing a thought_signature"),
        ({"contents": [*with_history(SIG)["contents"], {"role": "model", "parts": [{"functionCall": {"name": "f"}, "thoughtSignature": SIG}, {"functionCall": {"name": "f"}}]},
                       {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]},
         "gemini-2.5-flash", "number of function response parts is equal"),
        ({**valid_body(), "generationConfig": {"stopSequences": list("abcdef")}}, "gemini-2.5-flash", "at most 5"),
        ({**valid_body(), "generationConfig": {"thinkingConfig": {"thinkingLevel": "low", "thinkingBudget": 10}}}, "gemini-3-pro-preview", "cannot both be set"),
    ],
)
def test_emulator_rejects_what_google_rejects(body: dict[str, Any], model: str, fragment: str) -> None:
    assert fragment in (check_request(body, model) or "")


@pytest.mark.parametrize("body, model", [
    (valid_body(), "gemini-2.5-flash"),
    (with_history(None), "gemini-2.5-flash"),
    (with_history(SIG), "gemini-3-pro-preview"),
    (with_history(SKIP_SIGNATURE), "gemini-3-pro-preview"),
    ({"contents": [*with_history(None)["contents"], {"role": "model", "parts": [{"text": "done"}]}, {"role": "user", "parts": [{"text": "new turn"}]}]}, "gemini-3-pro-preview"),
])
def test_emulator_accepts_valid_requests(body: dict[str, Any], model: str) -> None:
    """Older turns are not validated on Gemini 3, only the current one."""
    assert check_request(body, model) is None


# ================================================================ the adapter against the emulator over HTTP


@pytest.fixture
async def emulator(aiohttp_client: Any) -> tuple[GeminiEmulator, Any, str]:
    emu = GeminiEmulator(api_key="upstream-key")
    client = await aiohttp_client(emu.app)
    return emu, client, str(client.make_url("")).rstrip("/")


def claude_code_like_request(stream: bool) -> ir.Request:
    """What a Claude client brings: mid-conversation system text, dirty schemas, calls from another
    upstream (no Gemini signature), Claude thinking, images in tool results, cache_control in extras."""
    messages = [
        ir.Message("user", [ir.Text("fix the bug")]),
        ir.Message("assistant", [
            ir.Reasoning("let me look", signature="EqQBCkYIBxgCKkB..."),
            ir.Text("Reading files."),
            ir.ToolCall("toolu_1", "edit_file", {"path": "a.py", "edits": []}),
            ir.ToolCall("toolu_2", "screenshot", {}),
        ]),
        ir.Message("user", [
            ir.ToolResult("toolu_1", "edit_file", [ir.Text("ok")]),
            ir.ToolResult("toolu_2", "screenshot", [ir.Image(media_type="image/png", data=PNG)]),
        ]),
        ir.Message("system", [ir.Text("<system-reminder>todo list is empty</system-reminder>")]),
        ir.Message("user", [ir.Text("continue")]),
    ]
    return ir.Request(
        "claude-alias", messages, system=[ir.Text("You are Claude Code.")],
        tools=[ir.Tool("edit_file", "Edit", DIRTY_SCHEMA), ir.Tool("screenshot", "Take one")],
        tool_choice=ir.ToolChoice("auto"), max_tokens=32000, temperature=1.0, stream=stream,
        reasoning=ir.ReasoningConfig(budget_tokens=4000),
        extras={"claude": {"cache_control": {"type": "ephemeral"}, "metadata": {"user_id": "x"}}},
    )


async def post(client: Any, call: Any) -> Any:
    return await client.session.post(call.url, data=orjson.dumps(call.body), headers=call.headers)


@pytest.mark.parametrize("stream", [False, True])
async def test_adapter_requests_pass_the_emulator_and_answers_decode(emulator: Any, stream: bool) -> None:
    emu, client, base = emulator
    emu.script(Reply(text="Done, the bug is fixed.", reasoning="checked twice", chunks=4, tool_calls=[
        ToolCallScript("edit_file", {"path": "b.py"}), ToolCallScript("screenshot", {})], input_tokens=120, output_tokens=40,
        cached_tokens=64, reasoning_tokens=15))
    call = ADAPTER.encode_request(claude_code_like_request(stream), target(base, "gemini-3-pro-preview"))
    resp = await post(client, call)
    assert resp.status == 200, await resp.text()
    sent = emu.last.body
    assert emu.last.headers["x-goog-api-key"] == "upstream-key"
    assert contents_roles(sent) == ["user", "model", "user"]
    if stream:
        assert emu.last.query == {"alt": "sse"} and resp.content_type == "text/event-stream"
        events = [e async for e in ADAPTER.decode_stream(resp.content.iter_any())]
        assert_stream_contract(events)
        assert len([e for e in events if isinstance(e, ir.TextDelta)]) >= 4
        response = await ir.collect(ir.iterate(events))
    else:
        response = ADAPTER.decode_response(await resp.read())
    kinds = [type(p).__name__ for p in response.parts]
    assert kinds == ["Reasoning", "Text", "ToolCall", "ToolCall"]
    reasoning, text, first, second = response.parts
    assert reasoning.text == "checked twice" and text.text == "Done, the bug is fixed."
    assert first.name == "edit_file" and first.arguments == {"path": "b.py"} and second.name == "screenshot"
    assert first.provider_metadata and first.provider_metadata["gemini"]["thoughtSignature"] and second.provider_metadata is None
    assert first.id.startswith("call_") and first.id != second.id
    assert response.finish == ir.Finish("tool_calls", "STOP")
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.reasoning_tokens) == (120, 40, 64, 15)


async def test_a_gemini_answer_replayed_next_turn_passes_gemini_3(emulator: Any) -> None:
    """The signature the emulator gave comes back on the same functionCall part."""
    emu, client, base = emulator
    emu.script(Reply(text="", reasoning="plan", tool_calls=[ToolCallScript("ls", {}), ToolCallScript("pwd", {})]))
    first = ir.Request("a", [ir.Message("user", [ir.Text("list")])], tools=[ir.Tool("ls"), ir.Tool("pwd")], stream=True)
    resp = await post(client, ADAPTER.encode_request(first, target(base, "gemini-3-pro-preview")))
    answer = await ir.collect(ADAPTER.decode_stream(resp.content.iter_any()))
    calls = [p for p in answer.parts if isinstance(p, ir.ToolCall)]
    second = ir.Request("a", [
        *first.messages,
        ir.Message("assistant", answer.parts),
        ir.Message("tool", [ir.ToolResult(calls[0].id, "", [ir.Text("a.txt")])]),
        ir.Message("tool", [ir.ToolResult(calls[1].id, "", [ir.Text("/home")])]),
    ], tools=first.tools)
    emu.script(Reply(text="Found a.txt"))
    resp = await post(client, ADAPTER.encode_request(second, target(base, "gemini-3-pro-preview")))
    assert resp.status == 200, await resp.text()
    replayed = [p for p in emu.last.body["contents"][1]["parts"] if "functionCall" in p]
    assert replayed[0]["thoughtSignature"] == calls[0].provider_metadata["gemini"]["thoughtSignature"] != SKIP_SIGNATURE
    assert "thoughtSignature" not in replayed[1]


async def test_emulator_json_array_stream_through_the_decoder(emulator: Any) -> None:
    emu, client, base = emulator
    emu.script(Reply(text="one two three", chunks=3))
    call = ADAPTER.encode_request(ir.Request("a", [ir.Message("user", [ir.Text("count")])], stream=True), target(base))
    resp = await client.session.post(call.url.removesuffix("?alt=sse"), data=orjson.dumps(call.body), headers=call.headers)
    assert resp.content_type == "application/json"
    events = [e async for e in ADAPTER.decode_stream(resp.content.iter_any())]
    assert_stream_contract(events)
    assert "".join(e.text for e in events if isinstance(e, ir.TextDelta)) == "one two three"


async def test_emulator_errors_through_the_decoders(emulator: Any) -> None:
    emu, client, base = emulator
    emu.script(Reply(error_status=429, error_message="Resource has been exhausted", retry_after="7"))
    call = ADAPTER.encode_request(ir.Request("a", [ir.Message("user", [ir.Text("x")])], stream=True), target(base))
    resp = await post(client, call)
    assert resp.status == 429 and resp.headers["Retry-After"] == "7"
    err = ADAPTER.decode_error(resp.status, await resp.read())
    assert (err.kind, err.status, err.message, err.retry_after) == ("rate_limit", 429, "Resource has been exhausted", 7.0)

    emu.script(Reply(text="partial answer here", chunks=3, error_after_start=True, error_message="internal failure"))
    resp = await post(client, call)
    events = [e async for e in ADAPTER.decode_stream(resp.content.iter_any())]
    assert isinstance(events[0], ir.ResponseStart) and any(isinstance(e, ir.TextDelta) for e in events)
    assert events[-1] == ir.StreamError("api_error", "internal failure", 500)

    bad = ADAPTER.encode_request(ir.Request("a", [ir.Message("user", [ir.Text("x")])]), target(base, key="wrong"))
    resp = await post(client, bad)
    err = ADAPTER.decode_error(resp.status, await resp.read())
    assert (resp.status, err.status, err.kind) == (400, 401, "authentication")


async def test_count_tokens_against_the_emulator(emulator: Any) -> None:
    emu, client, base = emulator
    emu.script(Reply(input_tokens=321))
    req = ir.Request("a", [ir.Message("user", [ir.Text("count me")])], system=[ir.Text("sys")], tools=[ir.Tool("edit_file", "", DIRTY_SCHEMA)])
    call = ADAPTER.encode_count_tokens_request(req, target(base))
    assert call is not None and call.url.endswith("/v1beta/models/gemini-2.5-flash:countTokens")
    resp = await post(client, call)
    assert resp.status == 200, await resp.text()
    assert ADAPTER.decode_count_tokens(await resp.read()) == 321


# ================================================================ the google-genai SDK on both sides


def genai_client(base: str, key: str = "upstream-key") -> Any:
    from google import genai
    from google.genai import types

    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=base, api_version="v1beta"))


async def test_google_genai_bodies_decode_and_reach_the_emulator_unchanged(emulator: Any) -> None:
    """What the official SDK sends (snake_case inside thinkingConfig, upper-case schema types) decodes,
    and re-encoded for a Gemini upstream it still passes the emulator."""
    from google.genai import types

    emu, client, base = emulator
    sdk = genai_client(base)
    emu.script(Reply(text="ok"))
    config = types.GenerateContentConfig(
        system_instruction="Be terse.",
        temperature=0.2,
        top_k=10,
        max_output_tokens=64,
        thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=1024),
        tools=[types.Tool(function_declarations=[types.FunctionDeclaration(
            name="lookup", description="Look up", parameters=types.Schema(type="OBJECT", properties={"q": types.Schema(type="STRING")}, required=["q"]))])],
        tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="ANY", allowed_function_names=["lookup"])),
    )
    await sdk.aio.models.generate_content(model="gemini-2.5-flash", contents="hello", config=config)
    await sdk.aio.aclose()
    req = ADAPTER.decode_request(emu.last.body, route(), {})
    assert req.system == [ir.Text("Be terse.")] and req.messages == [ir.Message("user", [ir.Text("hello")])]
    assert (req.temperature, req.top_k, req.max_tokens) == (0.2, 10, 64)
    assert req.reasoning == ir.ReasoningConfig(enabled=True, budget_tokens=1024, include_thoughts=True)
    assert req.tools[0].parameters == {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    assert req.tool_choice == ir.ToolChoice("tool", "lookup")
    assert check_request(encode(req), "gemini-2.5-flash") is None


async def test_google_genai_reads_what_the_adapter_encodes(aiohttp_client: Any) -> None:
    """A tiny server speaking through our encoders; the official SDK must parse every answer."""
    from google.genai import errors as genai_errors

    answer = ir.Response("r1", "up", [ir.Text("Hello there"), ir.ToolCall("call_1", "lookup", {"q": "x"}, gemini_meta(SIG))],
                         ir.Finish("tool_calls"), ir.Usage(input_tokens=11, output_tokens=4))

    async def model_call(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        target_name = request.match_info["target"]
        model, _, method = target_name.rpartition(":")
        route_ = parse_path("POST", request.path, dict(request.query))
        req = ADAPTER.decode_request(body, route_, request.headers)
        if model == "broken":
            status, error = ADAPTER.encode_error(RateLimited("slow down"))
            return web.json_response(error, status=status)
        if method == "countTokens":
            return web.json_response(ADAPTER.encode_count_tokens(ir.estimate_tokens(req)))
        if method == "generateContent":
            return web.json_response(ADAPTER.encode_response(answer, req))
        encoder = ADAPTER.stream_encoder(req, route_)
        resp = web.StreamResponse()
        resp.content_type = encoder.content_type
        await resp.prepare(request)
        await resp.write(encoder.begin())
        for event in ir.response_events(answer):
            data = encoder.encode(event)
            if data:
                await resp.write(data)
        await resp.write(encoder.end())
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response(ADAPTER.encode_model_list([ModelInfo("fast"), ModelInfo("smart")], route()))

    app = web.Application()
    app.router.add_post("/v1beta/models/{target}", model_call)
    app.router.add_get("/v1beta/models", models)
    server = await aiohttp_client(app)
    sdk = genai_client(str(server.make_url("")).rstrip("/"))
    try:
        whole = await sdk.aio.models.generate_content(model="alias", contents="hi")
        assert whole.text == "Hello there" and whole.function_calls[0].args == {"q": "x"}
        assert whole.candidates[0].content.parts[1].thought_signature == base64.b64decode(SIG)
        assert whole.usage_metadata.prompt_token_count == 11 and whole.model_version == "alias"

        chunks = [c async for c in await sdk.aio.models.generate_content_stream(model="alias", contents="hi")]
        assert all(c.candidates[0].content.parts for c in chunks)  # the chat helper drops turns otherwise
        assert "".join(c.text or "" for c in chunks) == "Hello there"
        assert chunks[-1].function_calls[0].name == "lookup" and chunks[-1].candidates[0].finish_reason == "STOP"
        assert chunks[-1].usage_metadata.candidates_token_count == 4

        chat = sdk.aio.chats.create(model="alias")
        [c async for c in await chat.send_message_stream("hi")]
        roles = [c.role for c in chat.get_history(curated=True)]
        assert roles[0] == "user" and len(roles) >= 2 and set(roles[1:]) == {"model"}  # the streamed turn was kept

        assert [m.name async for m in await sdk.aio.models.list()] == ["models/fast", "models/smart"]
        assert (await sdk.aio.models.count_tokens(model="alias", contents="hello world")).total_tokens >= 1

        with pytest.raises(genai_errors.ClientError) as info:
            await sdk.aio.models.generate_content(model="broken", contents="hi")
        assert info.value.code == 429 and info.value.status == "RESOURCE_EXHAUSTED"
    finally:
        await sdk.aio.aclose()
