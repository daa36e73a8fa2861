"""The Claude adapter: request/response/stream conversion both ways, the known traps,
and the same conversions against the Claude emulator's real bytes."""

from __future__ import annotations

import copy
import json
from typing import Any, AsyncIterator

import anthropic
import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from ccproxyd import ir
from ccproxyd.config import Provider
from ccproxyd.errors import ClientError, UpstreamError
from ccproxyd.paths import Route
from ccproxyd.protocols.base import ModelInfo, UpstreamTarget
from ccproxyd.protocols.claude import ADAPTER, ClaudeStreamEncoder
from tests.emulators.base import Reply, ToolCallScript
from tests.emulators.claude import ClaudeEmulator, validate_request, Invalid

ROUTE = Route("claude", "chat")
SIGNED = {"claude": {"signed": True}}


def decode(body: dict[str, Any], headers: dict[str, str] | None = None) -> ir.Request:
    return ADAPTER.decode_request(copy.deepcopy(body), ROUTE, headers or {})


def target(base: str = "http://upstream.test", key: str | None = "sk-upstream", max_tokens: int | None = None) -> UpstreamTarget:
    return UpstreamTarget(Provider("up", "claude", base, max_tokens=max_tokens), "claude-upstream-model", key)


def encode(req: ir.Request, **kw: Any) -> dict[str, Any]:
    return ADAPTER.encode_request(req, target(**kw)).body


def user(*parts: ir.Part) -> ir.Message:
    return ir.Message("user", list(parts))


def assistant(*parts: ir.Part) -> ir.Message:
    return ir.Message("assistant", list(parts))


def request(*messages: ir.Message, **kw: Any) -> ir.Request:
    return ir.Request(model="alias", messages=list(messages), **kw)


def claude_code_body() -> dict[str, Any]:
    """Shaped like what Claude Code sends."""
    tools = [
        {"name": f"Tool_{i}", "description": f"tool {i}", "input_schema": {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}}
        for i in range(22)
    ]
    tools[-1]["cache_control"] = {"type": "ephemeral"}
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Be brief."},
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "list files"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should run ls.", "signature": "c2lnLTE="},
                    {"type": "text", "text": "Running ls."},
                    {"type": "tool_use", "id": "toolu_01", "name": "Tool_0", "input": {"x": "ls"}},
                ],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "a.txt\nb.txt"}]},
            {"role": "system", "content": "The user switched to plan mode."},
            {"role": "user", "content": [{"type": "text", "text": "thanks", "cache_control": {"type": "ephemeral"}}]},
        ],
        "tools": tools,
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "metadata": {"user_id": "user_abc_account_def_session_123"},
    }


CLAUDE_CODE_HEADERS = {
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14,context-management-2025-06-27",
    "anthropic-version": "2023-06-01",
    "x-api-key": "client-key-must-not-travel",
}


# ---------------------------------------------------------------- SSE helpers


def frames(data: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    out = []
    for chunk in data.decode().split("\n\n"):
        if not chunk.strip():
            continue
        event, payload = None, None
        for line in chunk.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                payload = json.loads(line[6:])
        assert payload is not None, chunk
        out.append((event, payload))
    return out


def run_encoder(events: list[ir.Event], req: ir.Request | None = None) -> list[tuple[str | None, dict[str, Any]]]:
    encoder = ClaudeStreamEncoder(req or request(user(ir.Text("hi"))))
    data = encoder.begin() + b"".join(encoder.encode(e) for e in events) + encoder.end()
    return frames(data)


def check_stream(fs: list[tuple[str | None, dict[str, Any]]]) -> None:
    """The Claude stream invariants from the adapter issue."""
    types = [d["type"] for _, d in fs]
    assert all(event == d["type"] for event, d in fs), "every frame names its event"
    assert types[0] == "message_start" and types.count("message_start") == 1
    assert types[-2:] == ["message_delta", "message_stop"] and types.count("message_delta") == 1
    open_index, next_index = None, 0
    for _, d in fs:
        if d["type"] == "content_block_start":
            assert open_index is None, "blocks never interleave"
            assert d["index"] == next_index, "indices contiguous from 0"
            block = d["content_block"]
            if block["type"] == "tool_use":
                assert block["input"] == {}, "tool input goes in input_json_delta only"
            if block["type"] == "text":
                assert block["text"] == ""
            open_index, next_index, kind, deltas = d["index"], next_index + 1, block["type"], []
        elif d["type"] == "content_block_delta":
            assert d["index"] == open_index
            deltas.append(d["delta"])
        elif d["type"] == "content_block_stop":
            assert d["index"] == open_index, "each opened block closed exactly once"
            if kind == "text":
                assert any(x.get("text") for x in deltas), "no empty text block"
            if kind == "tool_use":
                assert deltas and all(x["type"] == "input_json_delta" for x in deltas)
                json.loads("".join(x["partial_json"] for x in deltas))
            if kind == "thinking":
                sigs = [i for i, x in enumerate(deltas) if x["type"] == "signature_delta"]
                assert sigs in ([], [len(deltas) - 1]), "signature_delta comes last, once"
            open_index = None
    assert open_index is None
    delta = next(d for _, d in fs if d["type"] == "message_delta")
    assert delta["delta"]["stop_reason"] in {"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"}
    assert {"input_tokens", "output_tokens"} <= set(delta["usage"])


async def aiter(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


async def decode_events(data: bytes, split: int | None = None) -> list[ir.Event]:
    chunks = [data[i : i + split] for i in range(0, len(data), split)] if split else [data]
    return [e async for e in ADAPTER.decode_stream(aiter(chunks))]


def sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in events)


# ================================================================ decode_request


def test_claude_code_request_decodes() -> None:
    req = decode(claude_code_body(), CLAUDE_CODE_HEADERS)
    assert req.model == "claude-sonnet-4-5"
    assert req.max_tokens == 32000 and req.stream
    assert [p.text for p in req.system] == ["You are Claude Code.", "Be brief."]
    assert req.system[0].provider_metadata == {"claude": {"cache_control": {"type": "ephemeral"}}}
    assert len(req.tools) == 22
    assert req.reasoning is not None and req.reasoning.enabled and req.reasoning.effort == "high"
    extras = req.extras["claude"]
    assert extras["context_management"]["edits"][0]["type"] == "clear_thinking_20251015"
    assert extras["metadata"] == {"user_id": "user_abc_account_def_session_123"}
    assert extras["thinking"] == {"type": "adaptive"}
    assert extras["anthropic-beta"] == CLAUDE_CODE_HEADERS["anthropic-beta"]
    assert [m.role for m in req.messages] == ["user", "assistant", "user", "system", "user"]
    thinking, text, call = req.messages[1].parts
    assert isinstance(thinking, ir.Reasoning) and thinking.signature == "c2lnLTE=" and "claude" in thinking.provider_metadata
    assert isinstance(call, ir.ToolCall) and call.arguments == {"x": "ls"}
    result = req.messages[2].parts[0]
    assert isinstance(result, ir.ToolResult) and result.name == "Tool_0", "result names linked from the call"
    assert result.content[0].text == "a.txt\nb.txt"


def test_cache_control_stays_in_claude_metadata_only() -> None:
    req = decode(claude_code_body())
    def shared(value: Any) -> Any:  # everything but provider_metadata
        if isinstance(value, dict):
            return {k: shared(v) for k, v in value.items() if k != "provider_metadata"}
        if isinstance(value, list):
            return [shared(v) for v in value]
        return value

    everything = orjson.dumps([req.system, req.tools, req.messages])
    assert b"cache_control" in everything
    assert b"cache_control" not in orjson.dumps(shared(orjson.loads(everything)))
    assert req.messages[-1].parts[0].provider_metadata == {"claude": {"cache_control": {"type": "ephemeral"}}}


@pytest.mark.parametrize(
    "patch, param",
    [
        ({"model": None}, "model"),
        ({"model": 3}, "model"),
        ({"messages": "hi"}, "messages"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"stop_sequences": [1]}, "stop_sequences[0]"),
        ({"stream": "yes"}, "stream"),
        ({"tools": {"name": "x"}}, "tools"),
        ({"tools": [{"description": "no name"}]}, "tools[0].name"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
        ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
        ({"system": 5}, "system"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}, "messages[0].content[0].text"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "ftp"}}]}]}, "messages[0].content[0].source.type"),
    ],
)
def test_wrong_fields_name_themselves(patch: dict[str, Any], param: str) -> None:
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], **patch}
    if body["model"] is None:
        del body["model"]
    with pytest.raises(ClientError) as info:
        decode(body)
    assert info.value.param == param
    assert param.split("[")[0].split(".")[0] in info.value.message


def test_decode_options() -> None:
    req = decode({
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "get", "input_schema": {"type": "object"}, "strict": True}, {"type": "web_search_20250305", "name": "web_search"}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "thinking": {"type": "enabled", "budget_tokens": 5000},
        "stop_sequences": ["END"],
        "top_k": 5,
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
    })
    assert req.max_tokens is None, "max_tokens is optional for the proxy; the upstream side supplies one"
    assert req.tool_choice == ir.ToolChoice("required") and req.parallel_tool_calls is False
    assert req.reasoning == ir.ReasoningConfig(budget_tokens=5000)
    assert [t.name for t in req.tools] == ["get"], "server tools are not client tools"
    assert req.extras["claude"]["_server_tools"][0]["type"] == "web_search_20250305"
    assert req.extras["claude"]["_tool_fields"] == {"get": {"strict": True}}
    assert req.stop == ["END"] and req.top_k == 5
    assert req.response_format == ir.ResponseFormat("json_schema", {"type": "object"})
    assert decode({"model": "m", "messages": [], "thinking": {"type": "disabled"}}).reasoning == ir.ReasoningConfig(enabled=False)


def test_decode_images_documents_and_unknown_blocks() -> None:
    req = decode({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"}, "title": "doc"},
        {"type": "search_result", "source": "s", "title": "t", "content": []},
        {"type": "tool_result", "tool_use_id": "t1", "is_error": True, "content": [
            {"type": "text", "text": "shot"}, {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}}]},
    ]}]})
    png, url, pdf, opaque, result = req.messages[0].parts
    assert png == ir.Image("image/png", "iVBOR")
    assert url.url == "https://example.com/cat.jpg" and url.data is None
    assert pdf.media_type == "application/pdf" and pdf.provider_metadata == {"claude": {"document": {"title": "doc"}}}
    assert isinstance(opaque, ir.Text) and opaque.text == "" and opaque.provider_metadata["claude"]["block"]["type"] == "search_result"
    assert isinstance(result, ir.ToolResult) and result.is_error and isinstance(result.content[1], ir.Image)


def test_unsigned_thinking_is_not_marked_claude() -> None:
    req = decode({"model": "m", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "from elsewhere", "signature": ""}, {"type": "text", "text": "a"}]}]})
    reasoning = req.messages[1].parts[0]
    assert isinstance(reasoning, ir.Reasoning) and reasoning.provider_metadata is None


# ================================================================ encode_request


def test_upstream_call_url_headers_and_model() -> None:
    req = decode(claude_code_body(), CLAUDE_CODE_HEADERS)
    call = ADAPTER.encode_request(req, target("http://claude.test:8080"))
    assert call.url == "http://claude.test:8080/v1/messages" and call.stream
    assert call.headers["x-api-key"] == "sk-upstream"
    assert call.headers["anthropic-version"] == "2023-06-01"
    assert call.headers["anthropic-beta"] == CLAUDE_CODE_HEADERS["anthropic-beta"]
    assert "client-key-must-not-travel" not in json.dumps(call.headers) + json.dumps(call.body)
    assert call.body["model"] == "claude-upstream-model"
    plain = ADAPTER.encode_request(request(user(ir.Text("hi"))), target(key=None))
    assert "anthropic-beta" not in plain.headers and "x-api-key" not in plain.headers


def test_claude_code_request_round_trips() -> None:
    body = encode(decode(claude_code_body(), CLAUDE_CODE_HEADERS))
    validate_request(body)  # what the real API accepts
    assert body["thinking"] == {"type": "adaptive"}
    assert body["context_management"] == claude_code_body()["context_management"]
    assert body["metadata"] == claude_code_body()["metadata"]
    assert body["output_config"] == {"effort": "high"}
    assert body["max_tokens"] == 32000
    assert body["system"][0] == {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}
    assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"} and len(body["tools"]) == 22
    assert body["messages"][1]["content"][0] == {"type": "thinking", "thinking": "I should run ls.", "signature": "c2lnLTE="}
    last = body["messages"][-1]
    assert last["role"] == "user"
    assert last["content"][0]["type"] == "tool_result"
    assert last["content"][1]["text"] == "<system-reminder>\nThe user switched to plan mode.\n</system-reminder>"
    assert last["content"][2] == {"type": "text", "text": "thanks", "cache_control": {"type": "ephemeral"}}
    assert not any(k.startswith("_") or k == "anthropic-beta" for k in body)


def test_other_protocols_extras_never_forwarded() -> None:
    req = request(user(ir.Text("hi")), seed=7, extras={"openai": {"user": "u1", "logprobs": True}, "gemini": {"safetySettings": []}})
    body = encode(req)
    assert not {"user", "logprobs", "safetySettings", "seed"} & set(body)
    validate_request(body)


def test_system_messages_folded() -> None:
    req = request(
        ir.Message("system", [ir.Text("leading")]),
        user(ir.Text("q1")),
        assistant(ir.Text("a1")),
        ir.Message("system", [ir.Text("mid")]),
        assistant(ir.Text("a2")),
        system=[ir.Text("top")],
    )
    body = encode(req)
    validate_request(body)
    assert [b["text"] for b in body["system"]] == ["top", "leading"]
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert "mid" in body["messages"][2]["content"][0]["text"]


def test_alternation_and_opening_turn() -> None:
    req = request(assistant(ir.Text("I start")), assistant(ir.Text("twice")), user(ir.Text("u1")), user(ir.Text("u2")))
    body = encode(req)
    validate_request(body)
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert [b["text"] for b in body["messages"][1]["content"]] == ["I start", "twice"]
    assert [b["text"] for b in body["messages"][2]["content"]] == ["u1", "u2"]
    assert encode(request())["messages"][0]["role"] == "user", "never an empty messages list"


def test_empty_text_blocks_dropped() -> None:
    req = request(user(ir.Text(""), ir.Text("  \n"), ir.Text("real")), assistant(ir.Text("")), user(ir.Text("more")), system=[ir.Text("")])
    body = encode(req)
    validate_request(body)
    texts = [b.get("text") for m in body["messages"] for b in m["content"]]
    assert texts == ["real", "more"] and "system" not in body
    naive = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]}
    with pytest.raises(Invalid, match="non-empty"):
        validate_request(naive)


def test_trailing_whitespace_cut_from_prefill() -> None:
    body = encode(request(user(ir.Text("q")), assistant(ir.Text("Sure:  \n"))))
    validate_request(body)
    assert body["messages"][-1]["content"][-1]["text"] == "Sure:"


def test_tool_results_from_openai_style_conversation() -> None:
    req = request(
        user(ir.Text("weather in two cities")),
        assistant(ir.ToolCall("call_a", "weather", {"city": "Paris"}), ir.ToolCall("call_b", "weather", {"city": "Oslo"})),
        ir.Message("tool", [ir.ToolResult("call_b", "weather", [ir.Text("cold")])]),
        ir.Message("tool", [ir.ToolResult("call_a", "weather", [ir.Text("warm"), ir.Image("image/png", "iVBOR")], is_error=True)]),
        tools=[ir.Tool("weather", "get weather", {"type": "object", "properties": {"city": {"type": "string"}}})],
    )
    body = encode(req)
    validate_request(body)
    calls = body["messages"][1]["content"]
    assert [c["id"] for c in calls] == ["call_a", "call_b"], "parallel calls all kept"
    results = body["messages"][2]["content"]
    assert [r["tool_use_id"] for r in results] == ["call_a", "call_b"], "results in call order"
    assert results[0]["is_error"] is True
    assert results[0]["content"] == [{"type": "text", "text": "warm"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}]


def test_unanswered_and_orphan_tool_results_repaired() -> None:
    req = request(
        user(ir.Text("go")),
        assistant(ir.ToolCall("c1", "a", {}), ir.ToolCall("c2", "b", {})),
        user(ir.Text("note first"), ir.ToolResult("c1", "a", [ir.Text("ok")]), ir.ToolResult("zz", "a", [ir.Text("stray")])),
        assistant(ir.ToolCall("c3", "a", {})),
    )
    naive_rejected = {"model": "m", "max_tokens": 9, "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "a", "input": {}}]},
        {"role": "user", "content": "no result"},
    ]}
    with pytest.raises(Invalid, match="without `tool_result`"):
        validate_request(naive_rejected)
    body = encode(req)
    validate_request(body)
    turn = body["messages"][2]["content"]
    assert [b["type"] for b in turn] == ["tool_result", "tool_result", "text", "text"]
    assert turn[1] == {"type": "tool_result", "tool_use_id": "c2", "is_error": True, "content": "No result was recorded for this tool call."}
    assert "stray" in turn[3]["text"] and "zz" in turn[3]["text"]
    assert body["messages"][-1]["content"][0]["tool_use_id"] == "c3", "a trailing call is answered too"


def test_tool_ids_made_safe_consistently() -> None:
    req = request(user(ir.Text("q")), assistant(ir.ToolCall("fc:1/x", "f", {})), ir.Message("tool", [ir.ToolResult("fc:1/x", "f", [ir.Text("r")])]))
    body = encode(req)
    validate_request(body)
    assert body["messages"][1]["content"][0]["id"] == body["messages"][2]["content"][0]["tool_use_id"] == "fc_1_x"


def test_thinking_replayed_only_with_claude_signature() -> None:
    req = request(
        user(ir.Text("q")),
        assistant(
            ir.Reasoning("claude thought", "sig==", provider_metadata={"claude": {"signed": True}}),
            ir.Reasoning("gemini thought", "gsig", provider_metadata={"gemini": {"thoughtSignature": "gsig"}}),
            ir.Reasoning("deepseek thought"),
            ir.Reasoning(redacted="ENCRYPTED"),
            ir.Text("answer"),
        ),
        user(ir.Text("next")),
    )
    body = encode(req)
    validate_request(body)
    blocks = body["messages"][1]["content"]
    assert blocks == [
        {"type": "thinking", "thinking": "claude thought", "signature": "sig=="},
        {"type": "redacted_thinking", "data": "ENCRYPTED"},
        {"type": "text", "text": "answer"},
    ]
    unsigned = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "thinking", "thinking": "t"}]}]}
    with pytest.raises(Invalid, match="signature"):
        validate_request(unsigned)


def test_reasoning_effort_becomes_thinking_budget() -> None:
    req = request(user(ir.Text("q")), reasoning=ir.ReasoningConfig(effort="high"), temperature=0.3, top_k=40, top_p=0.5, max_tokens=4000)
    body = encode(req)
    validate_request(body)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": ir.effort_to_budget("high")}
    assert body["max_tokens"] == 4000 + ir.effort_to_budget("high")
    assert "temperature" not in body and "top_k" not in body and body["top_p"] == 0.95
    small = encode(request(user(ir.Text("q")), reasoning=ir.ReasoningConfig(budget_tokens=100)))
    assert small["thinking"]["budget_tokens"] == 1024 and small["max_tokens"] > 1024
    off = encode(request(user(ir.Text("q")), reasoning=ir.ReasoningConfig(enabled=False), temperature=0.2))
    assert off["thinking"] == {"type": "disabled"} and off["temperature"] == 0.2


def test_thinking_budget_fits_provider_cap() -> None:
    body = encode(request(user(ir.Text("q")), reasoning=ir.ReasoningConfig(effort="high"), max_tokens=20000), max_tokens=16000)
    validate_request(body)
    assert body["max_tokens"] == 16000 and body["thinking"]["budget_tokens"] < 16000


def test_thinking_turned_off_where_claude_would_reject_it() -> None:
    forced = request(user(ir.Text("q")), tools=[ir.Tool("f")], tool_choice=ir.ToolChoice("tool", "f"), reasoning=ir.ReasoningConfig(effort="low"))
    body = encode(forced)
    validate_request(body)
    assert body["thinking"] == {"type": "disabled"} and body["tool_choice"] == {"type": "tool", "name": "f"}
    loop = request(
        user(ir.Text("q")),
        assistant(ir.Reasoning("from openai"), ir.ToolCall("c1", "f", {})),
        ir.Message("tool", [ir.ToolResult("c1", "f", [ir.Text("r")])]),
        tools=[ir.Tool("f")],
        reasoning=ir.ReasoningConfig(effort="low"),
    )
    naive = encode(loop)
    validate_request(naive)
    assert naive["thinking"] == {"type": "disabled"}
    signed = copy.deepcopy(loop)
    signed.messages[1].parts[0] = ir.Reasoning("from claude", "sig", provider_metadata={"claude": {"signed": True}})
    body = encode(signed)
    validate_request(body)
    assert body["thinking"]["type"] == "enabled"


def test_temperature_clamped_and_not_sent_with_top_p() -> None:
    assert encode(request(user(ir.Text("q")), temperature=1.7))["temperature"] == 1.0
    both = encode(request(user(ir.Text("q")), temperature=0.4, top_p=0.9))
    validate_request(both)
    assert both["temperature"] == 0.4 and "top_p" not in both
    assert encode(request(user(ir.Text("q")), top_p=0.9))["top_p"] == 0.9
    with pytest.raises(Invalid, match="cannot both"):
        validate_request({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "q"}], "temperature": 0.5, "top_p": 0.5})


@pytest.mark.parametrize(
    "choice, parallel, expected",
    [
        (ir.ToolChoice("auto"), None, {"type": "auto"}),
        (ir.ToolChoice("none"), None, {"type": "none"}),
        (ir.ToolChoice("required"), None, {"type": "any"}),
        (ir.ToolChoice("tool", "f"), False, {"type": "tool", "name": "f", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, None, None),
    ],
)
def test_tool_choice(choice: ir.ToolChoice | None, parallel: bool | None, expected: dict[str, Any] | None) -> None:
    body = encode(request(user(ir.Text("q")), tools=[ir.Tool("f", "", {"properties": {}})], tool_choice=choice, parallel_tool_calls=parallel))
    validate_request(body)
    assert body.get("tool_choice") == expected
    assert body["tools"] == [{"name": "f", "input_schema": {"properties": {}, "type": "object"}}]
    assert "tool_choice" not in encode(request(user(ir.Text("q")), tool_choice=ir.ToolChoice("required"))), "no tools, no tool_choice"


def test_images() -> None:
    req = request(user(
        ir.Image("image/jpeg", "/9j/"),
        ir.Image(url="https://example.com/a.png"),
        ir.Image(url="data:image/webp;base64,UklGR"),
        ir.Image("application/pdf", "JVBER"),
        ir.Text("describe"),
    ))
    body = encode(req)
    validate_request(body)
    sources = [(b["type"], b["source"]) for b in body["messages"][0]["content"][:4]]
    assert sources == [
        ("image", {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}),
        ("image", {"type": "url", "url": "https://example.com/a.png"}),
        ("image", {"type": "base64", "media_type": "image/webp", "data": "UklGR"}),
        ("document", {"type": "base64", "media_type": "application/pdf", "data": "JVBER"}),
    ]


def test_cache_breakpoints_limited_oldest_dropped_first() -> None:
    cc = {"claude": {"cache_control": {"type": "ephemeral"}}}
    req = request(
        user(ir.Text("one", cc), ir.Text("two", cc)),
        assistant(ir.Text("three", cc)),
        user(ir.Text("four", cc)),
        system=[ir.Text("sys", cc)],
        tools=[ir.Tool("t")],
        extras={"claude": {"_tool_fields": {"t": {"cache_control": {"type": "ephemeral"}}}}},
    )
    naive = encode(copy.deepcopy(req))
    assert sum("cache_control" in b for m in naive["messages"] for b in m["content"]) == 4
    validate_request(naive)
    assert "cache_control" not in naive["tools"][0] and "cache_control" not in naive["system"][0]
    assert req.extras["claude"]["_tool_fields"]["t"]["cache_control"], "the request itself is left alone for retries"
    six = {"model": "m", "max_tokens": 5, "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}] * 5,
           "messages": [{"role": "user", "content": "q"}]}
    with pytest.raises(Invalid, match="maximum of 4"):
        validate_request(six)


def test_structured_output() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}
    body = encode(request(user(ir.Text("q")), response_format=ir.ResponseFormat("json_schema", schema, "answer")))
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    body = encode(request(user(ir.Text("q")), response_format=ir.ResponseFormat("json_object")))
    assert "JSON object" in body["system"][-1]["text"] and "output_config" not in body


def test_max_tokens_default_and_stops() -> None:
    body = encode(request(user(ir.Text("q")), stop=["END", ""]))
    assert body["max_tokens"] == 8192 and body["stop_sequences"] == ["END"] and "stream" not in body


def test_count_tokens_request() -> None:
    req = decode(claude_code_body(), CLAUDE_CODE_HEADERS)
    call = ADAPTER.encode_count_tokens_request(req, target())
    assert call is not None and call.url == "http://upstream.test/v1/messages/count_tokens" and not call.stream
    assert not {"max_tokens", "stream", "metadata", "temperature"} & set(call.body)
    assert call.headers["x-api-key"] == "sk-upstream"
    validate_request(call.body, counting=True)
    assert ADAPTER.decode_count_tokens(b'{"input_tokens": 1234}') == 1234
    assert ADAPTER.encode_count_tokens(99) == {"input_tokens": 99}


# ================================================================ upstream responses


MESSAGE = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "c2ln"},
        {"type": "text", "text": "Calling.", "citations": None},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
        {"type": "tool_use", "id": "toolu_2", "name": "g", "input": {}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5, "output_tokens": 7,
              "output_tokens_details": {"thinking_tokens": 3}},
}


def test_decode_response() -> None:
    resp = ADAPTER.decode_response(orjson.dumps(MESSAGE))
    thinking, text, call1, call2 = resp.parts
    assert isinstance(thinking, ir.Reasoning) and thinking.signature == "c2ln" and thinking.provider_metadata == SIGNED
    assert text == ir.Text("Calling.")
    assert call1 == ir.ToolCall("toolu_1", "f", {"a": 1}) and call2.name == "g"
    assert resp.finish == ir.Finish("tool_calls", "tool_use")
    u = resp.usage
    assert (u.input_tokens, u.cached_input_tokens, u.cache_creation_input_tokens, u.output_tokens, u.reasoning_tokens) == (115, 100, 5, 7, 3)
    assert u.raw["input_tokens"] == 10


@pytest.mark.parametrize(
    "stop, reason",
    [("end_turn", "stop"), ("max_tokens", "length"), ("stop_sequence", "stop"), ("tool_use", "tool_calls"),
     ("refusal", "content_filter"), ("pause_turn", "other"), ("model_context_window_exceeded", "length"), ("brand_new", "other")],
)
def test_finish_reasons_from_claude(stop: str, reason: str) -> None:
    resp = ADAPTER.decode_response(orjson.dumps({**MESSAGE, "content": [{"type": "text", "text": "x"}], "stop_reason": stop}))
    assert resp.finish == ir.Finish(reason, stop)  # type: ignore[arg-type]


def test_decode_error() -> None:
    err = ADAPTER.decode_error(529, b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')
    assert (err.status, err.kind, err.message) == (529, "overloaded", "Overloaded")
    err = ADAPTER.decode_error(502, b"<html>bad gateway</html>")
    assert (err.status, err.kind) == (502, "bad_gateway") and "bad gateway" in err.message
    with pytest.raises(UpstreamError) as info:
        ADAPTER.decode_response(b'{"type":"error","error":{"type":"api_error","message":"boom"}}')
    assert info.value.message == "boom"


# ================================================================ upstream streams


UPSTREAM_STREAM = sse(
    ("message_start", {"type": "message_start", "message": {"id": "msg_s", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
                                                            "stop_reason": None, "usage": {"input_tokens": 12, "cache_read_input_tokens": 30, "output_tokens": 1}}}),
    ("ping", {"type": "ping"}),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "let me "}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "think"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "U0lH"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hé"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "llo"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ("content_block_start", {"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_a", "name": "f", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"q": "a'}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": 'b"}'}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 2}),
    ("content_block_start", {"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "toolu_b", "name": "g", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 3}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 42}}),
    ("message_stop", {"type": "message_stop"}),
)


@pytest.mark.parametrize("split", [None, 1, 7])
async def test_decode_stream(split: int | None) -> None:
    events = await decode_events(UPSTREAM_STREAM, split)
    assert isinstance(events[0], ir.ResponseStart) and events[0].id == "msg_s"
    assert isinstance(events[1], ir.Usage) and events[1].input_tokens == 42, "input tokens known before any block"
    assert isinstance(events[-1], ir.Finished) and events[-1].finish == ir.Finish("tool_calls", "tool_use")
    resp = await ir.collect(ir.iterate(events))
    thinking, text, call_a, call_b = resp.parts
    assert isinstance(thinking, ir.Reasoning) and (thinking.text, thinking.signature) == ("let me think", "U0lH")
    assert thinking.provider_metadata == SIGNED
    assert text == ir.Text("Héllo")
    assert call_a == ir.ToolCall("toolu_a", "f", {"q": "ab"}) and call_b == ir.ToolCall("toolu_b", "g", {})
    assert (resp.usage.input_tokens, resp.usage.cached_input_tokens, resp.usage.output_tokens) == (42, 30, 42)
    assert sum(isinstance(e, ir.ToolCallStart) for e in events) == 2


async def test_stream_garbage_becomes_stream_error() -> None:
    head = UPSTREAM_STREAM.split(b"event: ping")[0]
    events = await decode_events(head + b"event: content_block_delta\ndata: {not json\n\n")
    assert isinstance(events[-1], ir.StreamError) and events[-1].status == 502


async def test_stream_error_event() -> None:
    head = UPSTREAM_STREAM.split(b"event: content_block_start")[0]
    events = await decode_events(head + sse(("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})))
    # nothing but the start before the error: the dispatcher may still fail over to another target
    assert events == [ir.ResponseStart("msg_s", "claude-x"), ir.StreamError("overloaded", "Overloaded", 529)]


async def test_truncated_stream_is_an_error() -> None:
    head = UPSTREAM_STREAM.split(b"event: message_delta")[0]
    events = await decode_events(head)
    assert isinstance(events[-1], ir.StreamError)


async def test_tool_input_given_in_start_is_kept() -> None:
    """Lax compatible servers put the whole input in content_block_start."""
    data = sse(
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {"k": 1}}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 1}}),
        ("message_stop", {"type": "message_stop"}),
    )
    resp = await ir.collect(ADAPTER.decode_stream(aiter([data])))
    assert resp.parts == [ir.ToolCall("t", "f", {"k": 1})]


# ================================================================ responses to a Claude client


def test_encode_response() -> None:
    req = request(user(ir.Text("q")))
    resp = ir.Response(
        "chatcmpl-1", "gpt-x",
        [ir.Reasoning("foreign"), ir.Reasoning("mine", "sig", provider_metadata=SIGNED), ir.Text("hi"), ir.Text(""), ir.ToolCall("call_1", "f", {"a": 1})],
        ir.Finish("tool_calls", "tool_calls"),
        ir.Usage(input_tokens=100, output_tokens=5, cached_input_tokens=60, cache_creation_input_tokens=10),
    )
    out = ADAPTER.encode_response(resp, req)
    assert out["model"] == "alias" and out["id"].startswith("msg_") and out["type"] == "message"
    assert out["content"] == [
        {"type": "thinking", "thinking": "foreign", "signature": ""},
        {"type": "thinking", "thinking": "mine", "signature": "sig"},
        {"type": "text", "text": "hi"},
        {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
    ]
    assert out["stop_reason"] == "tool_use"
    assert out["usage"] == {"input_tokens": 30, "output_tokens": 5, "cache_read_input_tokens": 60, "cache_creation_input_tokens": 10}
    anthropic.types.Message.model_validate(out)


@pytest.mark.parametrize(
    "finish, stop_reason",
    [(ir.Finish("stop", "STOP"), "end_turn"), (ir.Finish("length", "length"), "max_tokens"), (ir.Finish("content_filter", "SAFETY"), "refusal"),
     (ir.Finish("error", "MALFORMED_FUNCTION_CALL"), "end_turn"), (ir.Finish("other", "pause_turn"), "pause_turn"),
     (ir.Finish("stop", "stop_sequence"), "stop_sequence"), (ir.Finish("tool_calls", "end_turn"), "tool_use")],
)
def test_stop_reason_for_client(finish: ir.Finish, stop_reason: str) -> None:
    out = ADAPTER.encode_response(ir.Response("msg_1", "m", [ir.Text("x")], finish), request(stop=["STOP"]))
    assert out["stop_reason"] == stop_reason
    assert out["stop_sequence"] == ("STOP" if stop_reason == "stop_sequence" else None)


@pytest.mark.parametrize(
    "kind, status, etype",
    [("invalid_request", 400, "invalid_request_error"), ("authentication", 401, "authentication_error"), ("permission", 403, "permission_error"),
     ("not_found", 404, "not_found_error"), ("request_too_large", 413, "request_too_large"), ("rate_limit", 429, "rate_limit_error"),
     ("api_error", 500, "api_error"), ("bad_gateway", 502, "api_error"), ("unavailable", 503, "api_error"), ("timeout", 504, "timeout_error"),
     ("overloaded", 529, "overloaded_error")],
)
def test_encode_error(kind: str, status: int, etype: str) -> None:
    got_status, body = ADAPTER.encode_error(UpstreamError(status, kind, "why"))
    assert got_status == status and body == {"type": "error", "error": {"type": etype, "message": "why"}}


def test_model_list() -> None:
    out = ADAPTER.encode_model_list([ModelInfo("a"), ModelInfo("b")], Route("claude", "models"))
    assert out["first_id"] == "a" and out["last_id"] == "b" and out["has_more"] is False
    assert out["data"][0] == {"type": "model", "id": "a", "display_name": "a", "created_at": "1970-01-01T00:00:00Z"}


# ================================================================ the stream encoder


def tool_events(call_id: str, name: str, *fragments: str) -> list[ir.Event]:
    return [ir.ToolCallStart(call_id, name), *[ir.ToolCallDelta(f) for f in fragments], ir.ToolCallEnd()]


def test_encoder_tool_arguments_in_input_json_delta() -> None:
    fs = run_encoder([
        ir.ResponseStart("x", "m"),
        *tool_events("c1", "f", '{"a"', ": 1}"),
        *tool_events("c2", "g"),
        ir.Finished(ir.Finish("tool_calls")),
    ])
    check_stream(fs)
    starts = [d for _, d in fs if d["type"] == "content_block_start"]
    assert [s["content_block"]["id"] for s in starts] == ["c1", "c2"], "parallel calls all present, one block each"
    deltas = [d["delta"]["partial_json"] for _, d in fs if d["type"] == "content_block_delta"]
    assert deltas == ['{"a"', ": 1}", "{}"], "arguments in deltas; a call without arguments still gets {}"
    assert fs[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_encoder_closes_a_call_left_open() -> None:
    """A decoder that forgets ToolCallEnd must not corrupt the previous call's arguments."""
    fs = run_encoder([ir.ResponseStart(), ir.ToolCallStart("c1", "f"), ir.ToolCallDelta('{"a": 1}'), *tool_events("c2", "g", '{"b": 2}'),
                      ir.Finished(ir.Finish("tool_calls"))])
    check_stream(fs)
    assert [d["delta"]["partial_json"] for _, d in fs if d["type"] == "content_block_delta"] == ['{"a": 1}', '{"b": 2}']


def test_encoder_opens_blocks_lazily_and_contiguously() -> None:
    fs = run_encoder([
        ir.ResponseStart(),
        ir.TextStart(), ir.TextEnd(),  # empty: never sent
        ir.ReasoningStart(), ir.ReasoningEnd(),  # empty, unsigned: never sent
        ir.TextStart(), ir.TextDelta(""), ir.TextDelta("a"), ir.TextDelta("b"), ir.TextEnd(),
        *tool_events("c1", "f", "{}"),
        ir.TextStart(), ir.TextDelta("after"), ir.TextEnd(),
        ir.Finished(ir.Finish("stop")),
    ])
    check_stream(fs)
    starts = [d for _, d in fs if d["type"] == "content_block_start"]
    assert [s["index"] for s in starts] == [0, 1, 2]
    assert [s["content_block"]["type"] for s in starts] == ["text", "tool_use", "text"]


def test_encoder_claude_thinking_gets_signature_before_stop() -> None:
    fs = run_encoder([
        ir.ResponseStart(),
        ir.ReasoningStart({"claude": {"signed": True}}), ir.ReasoningDelta("deep"), ir.ReasoningSignature("AB"), ir.ReasoningSignature("CD"), ir.ReasoningEnd(),
        ir.RedactedReasoning("SECRET"),
        ir.TextStart(), ir.TextDelta("ok"), ir.TextEnd(),
        ir.Finished(ir.Finish("stop")),
    ])
    check_stream(fs)
    thinking = [d["delta"] for _, d in fs if d["type"] == "content_block_delta" and d["index"] == 0]
    assert thinking == [{"type": "thinking_delta", "thinking": "deep"}, {"type": "signature_delta", "signature": "ABCD"}]
    redacted = next(d for _, d in fs if d["type"] == "content_block_start" and d["index"] == 1)
    assert redacted["content_block"] == {"type": "redacted_thinking", "data": "SECRET"}


def test_encoder_signature_only_thinking() -> None:
    fs = run_encoder([ir.ResponseStart(), ir.ReasoningStart({"claude": {"signed": True}}), ir.ReasoningSignature("S"), ir.ReasoningEnd(),
                      ir.Finished(ir.Finish("stop"))])
    check_stream(fs)
    assert [d["delta"] for _, d in fs if d["type"] == "content_block_delta"] == [{"type": "signature_delta", "signature": "S"}]


def test_encoder_foreign_reasoning_is_carried_in_the_signature() -> None:
    """Another upstream's reasoning comes back from the client whole, and never reaches Claude."""
    from ccproxyd.protocols import carry
    from ccproxyd.protocols.claude import inbound, outbound

    fs = run_encoder([
        ir.ResponseStart(),
        ir.ReasoningStart({"gemini": {"x": 1}}), ir.ReasoningDelta("gemini thinks"), ir.ReasoningSignature("gemini-sig"), ir.ReasoningEnd(),
        ir.ReasoningStart(), ir.ReasoningDelta("plain thought"), ir.ReasoningEnd(),
        ir.TextStart(), ir.TextDelta("hi"), ir.TextEnd(),
        ir.Finished(ir.Finish("stop")),
    ])
    check_stream(fs)
    assert fs[1][1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    signatures = [d["delta"]["signature"] for _, d in fs if d.get("delta", {}).get("type") == "signature_delta"]
    assert len(signatures) == 1  # the plain thought needs nothing back
    assert carry.unwrap(signatures[0]) == ir.Reasoning("gemini thinks", "gemini-sig", None, {"gemini": {"x": 1}})
    body = {"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "gemini thinks", "signature": signatures[0]}, {"type": "text", "text": "hi"}]},
        {"role": "user", "content": "more"}]}
    req = inbound.decode_request(body, {})
    assert req.messages[1].parts[0] == ir.Reasoning("gemini thinks", "gemini-sig", None, {"gemini": {"x": 1}})
    sent = outbound.encode_request(req, UpstreamTarget(Provider("c", "claude", "http://x"), "m")).body
    assert [b["type"] for b in sent["messages"][1]["content"]] == ["text"]


def test_encoder_usage_known_early_goes_in_message_start() -> None:
    fs = run_encoder([
        ir.ResponseStart("msg_up", "m"),
        ir.Usage(input_tokens=142, cached_input_tokens=100, cache_creation_input_tokens=2),
        ir.TextStart(), ir.TextDelta("x"), ir.TextEnd(),
        ir.Usage(output_tokens=9),
        ir.Finished(ir.Finish("stop")),
    ])
    check_stream(fs)
    start = fs[0][1]["message"]
    assert start["id"] == "msg_up" and start["model"] == "alias"
    assert start["usage"]["input_tokens"] == 40 and start["usage"]["cache_read_input_tokens"] == 100
    assert fs[-2][1]["usage"] == {"input_tokens": 40, "output_tokens": 9, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 2}


def test_encoder_usage_known_late_goes_in_message_delta() -> None:
    req = request(user(ir.Text("x" * 400)))
    fs = run_encoder([ir.ResponseStart(), ir.TextStart(), ir.TextDelta("x"), ir.TextEnd(), ir.Usage(input_tokens=321, output_tokens=4),
                      ir.Finished(ir.Finish("length"))], req)
    check_stream(fs)
    assert fs[0][1]["message"]["usage"]["input_tokens"] == ir.estimate_tokens(req) > 0, "an estimate rather than 0"
    assert fs[-2][1]["usage"]["input_tokens"] == 321 and fs[-2][1]["delta"]["stop_reason"] == "max_tokens"


def test_encoder_mid_stream_error() -> None:
    encoder = ClaudeStreamEncoder(request())
    data = encoder.encode(ir.ResponseStart()) + encoder.encode(ir.TextStart()) + encoder.encode(ir.TextDelta("par"))
    data += encoder.encode(ir.StreamError("overloaded", "Overloaded", 529))
    data += encoder.end()
    fs = frames(data)
    assert fs[-1] == ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert [d["type"] for _, d in fs].count("message_stop") == 0


def test_encoder_nothing_but_finish() -> None:
    fs = run_encoder([ir.ResponseStart(), ir.Usage(input_tokens=3, output_tokens=0), ir.Finished(ir.Finish("stop"))])
    check_stream(fs)
    assert [d["type"] for _, d in fs] == ["message_start", "message_delta", "message_stop"]


def test_encoder_emits_as_events_come() -> None:
    encoder = ClaudeStreamEncoder(request())
    assert encoder.encode(ir.ResponseStart()) == b""
    first = encoder.encode(ir.TextDelta("a"))
    assert b"message_start" in first and b"text_delta" in first
    assert b"text_delta" in encoder.encode(ir.TextDelta("b"))


# Random well-formed IR streams keep every invariant.
_block = st.one_of(
    st.lists(st.text(max_size=3), max_size=3).map(lambda ts: [ir.TextStart(), *[ir.TextDelta(t) for t in ts], ir.TextEnd()]),
    st.tuples(st.booleans(), st.lists(st.text(max_size=3), max_size=3), st.lists(st.text(min_size=1, max_size=3), max_size=2)).map(
        lambda a: [ir.ReasoningStart({"claude": {"signed": True}} if a[0] else None), *[ir.ReasoningDelta(t) for t in a[1]],
                   *[ir.ReasoningSignature(s) for s in a[2]], ir.ReasoningEnd()]),
    st.sampled_from([['{"a": 1}'], ['{"a"', ": 1}"], [], [""]]).map(lambda fr: tool_events("c", "f", *fr)),
    st.just([ir.RedactedReasoning("r")]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_block, max_size=6), st.sampled_from(["stop", "length", "tool_calls", "content_filter", "error", "other"]))
def test_encoder_invariants_hold_for_any_stream(blocks: list[list[ir.Event]], reason: str) -> None:
    events: list[ir.Event] = [ir.ResponseStart()] + [e for b in blocks for e in b] + [ir.Usage(input_tokens=5, output_tokens=1), ir.Finished(ir.Finish(reason))]  # type: ignore[arg-type]
    check_stream(run_encoder(events))


# ================================================================ the real SDK reads the encoder's stream


async def test_anthropic_sdk_parses_encoder_stream(aiohttp_server: Any) -> None:
    events: list[ir.Event] = [
        ir.ResponseStart("up-1", "gpt-x"),
        ir.ReasoningStart({"claude": {"signed": True}}), ir.ReasoningDelta("why"), ir.ReasoningSignature("SIG"), ir.ReasoningEnd(),
        ir.TextStart(), ir.TextDelta("Let me check."), ir.TextEnd(),
        *tool_events("call_1", "lookup", '{"q": ', '"cats"}'),
        *tool_events("call_2", "lookup"),
        ir.Usage(input_tokens=77, cached_input_tokens=7, output_tokens=12),
        ir.Finished(ir.Finish("tool_calls")),
    ]

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        encoder = ADAPTER.stream_encoder(ADAPTER.decode_request(body, ROUTE, request.headers), ROUTE)
        resp = web.StreamResponse(headers={"content-type": encoder.content_type})
        await resp.prepare(request)
        for event in events:
            await resp.write(encoder.encode(event))
        await resp.write(encoder.end())
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    server = await aiohttp_server(app)
    client = anthropic.AsyncAnthropic(base_url=str(server.make_url("")), api_key="k", max_retries=0)
    async with client.messages.stream(model="alias", max_tokens=100, messages=[{"role": "user", "content": "hi"}]) as stream:
        message = await stream.get_final_message()
    await client.close()
    thinking, text, call1, call2 = message.content
    assert thinking.type == "thinking" and thinking.thinking == "why" and thinking.signature == "SIG"
    assert text.text == "Let me check."
    assert (call1.id, call1.input, call2.input) == ("call_1", {"q": "cats"}, {})
    assert message.stop_reason == "tool_use" and message.model == "alias"
    assert message.usage.input_tokens == 70 and message.usage.cache_read_input_tokens == 7 and message.usage.output_tokens == 12


# ================================================================ against the emulator


@pytest.fixture
async def emulator(aiohttp_client: Any) -> tuple[ClaudeEmulator, UpstreamTarget, Any]:
    emu = ClaudeEmulator()
    client = await aiohttp_client(emu.app)
    return emu, target(str(client.make_url("")).rstrip("/")), client


async def post(client: Any, call: Any) -> Any:
    return await client.session.post(call.url, headers=call.headers, json=call.body)


async def test_emulator_accepts_claude_code_round_trip(emulator: Any) -> None:
    emu, tgt, client = emulator
    emu.script(Reply(text="Done.", input_tokens=50, cached_tokens=20, output_tokens=3))
    req = decode({**claude_code_body(), "stream": False}, CLAUDE_CODE_HEADERS)
    call = ADAPTER.encode_request(req, tgt)
    async with await post(client, call) as resp:
        body = await resp.read()
        assert resp.status == 200, body
    out = ADAPTER.decode_response(body)
    assert out.parts == [ir.Text("Done.")] and out.finish == ir.Finish("stop", "end_turn")
    assert (out.usage.input_tokens, out.usage.cached_input_tokens) == (50, 20)
    assert emu.last.headers["x-api-key"] == "sk-upstream"
    assert emu.last.headers["anthropic-beta"] == CLAUDE_CODE_HEADERS["anthropic-beta"]


async def test_emulator_stream_decodes(emulator: Any) -> None:
    emu, tgt, client = emulator
    emu.script(Reply(
        text="Checking both.", reasoning="plan it", reasoning_signature="RealSig==", chunks=4,
        tool_calls=[ToolCallScript("lookup", {"q": "a", "n": [1, 2]}, id="toolu_x"), ToolCallScript("lookup", {"q": "b"})],
        input_tokens=90, cached_tokens=30, output_tokens=25, reasoning_tokens=6,
    ))
    req = request(user(ir.Text("go")), stream=True, tools=[ir.Tool("lookup")], reasoning=ir.ReasoningConfig(effort="low"))
    call = ADAPTER.encode_request(req, tgt)
    async with await post(client, call) as resp:
        assert resp.status == 200, await resp.text()
        events = [e async for e in ADAPTER.decode_stream(resp.content.iter_any())]
    text_deltas = [e for e in events if isinstance(e, ir.TextDelta)]
    assert len(text_deltas) >= 4
    out = await ir.collect(ir.iterate(events))
    thinking, text, call_x, call_y = out.parts
    assert (thinking.text, thinking.signature) == ("plan it", "RealSig==")
    assert text.text == "Checking both."
    assert call_x == ir.ToolCall("toolu_x", "lookup", {"q": "a", "n": [1, 2]})
    assert call_y.arguments == {"q": "b"} and call_y.id.startswith("toolu_")
    assert out.finish.reason == "tool_calls"
    assert (out.usage.input_tokens, out.usage.cached_input_tokens, out.usage.output_tokens, out.usage.reasoning_tokens) == (90, 30, 25, 6)

    # the answer goes back next turn: signed thinking and both results, accepted by the emulator
    follow = request(
        user(ir.Text("go")), assistant(*out.parts),
        ir.Message("tool", [ir.ToolResult(call_x.id, "", [ir.Text("A")]), ir.ToolResult(call_y.id, "", [ir.Text("B")])]),
        tools=[ir.Tool("lookup")], reasoning=ir.ReasoningConfig(effort="low"),
    )
    ir.link_tool_results(follow.messages)
    emu.script(Reply(text="Both done."))
    call = ADAPTER.encode_request(follow, tgt)
    async with await post(client, call) as resp:
        assert resp.status == 200, await resp.text()
    sent = emu.last.body
    assert sent["thinking"]["type"] == "enabled"
    assert sent["messages"][1]["content"][0] == {"type": "thinking", "thinking": "plan it", "signature": "RealSig=="}


async def test_emulator_error_and_retry_after(emulator: Any) -> None:
    emu, tgt, client = emulator
    emu.script(Reply(error_status=529, error_message="Overloaded", retry_after="7"))
    call = ADAPTER.encode_request(request(user(ir.Text("q"))), tgt)
    async with await post(client, call) as resp:
        assert resp.status == 529 and resp.headers["retry-after"] == "7"
        err = ADAPTER.decode_error(resp.status, await resp.read())
    assert (err.kind, err.message) == ("overloaded", "Overloaded")


async def test_emulator_error_after_start(emulator: Any) -> None:
    emu, tgt, client = emulator
    emu.script(Reply(text="partial answer here", error_after_start=True, error_message="Overloaded"))
    call = ADAPTER.encode_request(request(user(ir.Text("q")), stream=True), tgt)
    async with await post(client, call) as resp:
        events = [e async for e in ADAPTER.decode_stream(resp.content.iter_any())]
    assert isinstance(events[0], ir.ResponseStart)
    assert events[-1] == ir.StreamError("overloaded", "Overloaded", 529)


async def test_emulator_count_tokens(emulator: Any) -> None:
    emu, tgt, client = emulator
    call = ADAPTER.encode_count_tokens_request(decode(claude_code_body(), CLAUDE_CODE_HEADERS), tgt)
    async with await post(client, call) as resp:
        assert resp.status == 200, await resp.text()
        tokens = ADAPTER.decode_count_tokens(await resp.read())
    assert tokens > 100 and emu.last.path == "/v1/messages/count_tokens"


async def test_emulator_rejects_what_claude_rejects(emulator: Any) -> None:
    """Each trap body is refused with the documented 400, so the acceptance tests above can fail."""
    emu, tgt, client = emulator
    base = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "q"}]}
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    traps = [
        {**base, "max_tokens": None},
        {**base, "messages": []},
        {**base, "messages": [{"role": "assistant", "content": "first"}]},
        {**base, "messages": [{"role": "system", "content": "mid"}]},
        {**base, "temperature": 1.5},
        {**base, "seed": 3},
        {**base, "tools": [{"name": "bad.name", "input_schema": {"type": "object"}}]},
        {**base, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope", "content": "x"}]}]},
        {**base, "messages": [{"role": "user", "content": [{"type": "text", "text": "x", "signed": True}]}]},
        {**base, "thinking": {"type": "enabled", "budget_tokens": 2000}},
    ]
    for trap in traps:
        body = {k: v for k, v in trap.items() if v is not None}
        async with client.session.post(tgt.provider.base_url + "/v1/messages", headers=headers, json=body) as resp:
            data = await resp.json()
            assert resp.status == 400, body
            assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    async with client.session.post(tgt.provider.base_url + "/v1/messages", json=base) as resp:
        assert resp.status == 401 and (await resp.json())["error"]["type"] == "authentication_error"
    async with client.session.post(tgt.provider.base_url + "/v1/messages", headers={"x-api-key": "k"}, json=base) as resp:
        assert resp.status == 400
