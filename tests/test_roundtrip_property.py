"""Random unified requests survive encode → decode through each protocol.

For every adapter, a request encoded for an upstream of that protocol and
decoded again as if a client had sent it must keep everything the protocol can
express: system text, the conversation's texts, tool calls with their
arguments, tool results linked to their calls, tool definitions, sampling.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccproxyd import ir
from ccproxyd.config import Provider
from ccproxyd.paths import Route
from ccproxyd.protocols import ADAPTERS
from ccproxyd.protocols.base import UpstreamTarget

words = st.text(alphabet=string.ascii_letters + string.digits + " .,!?'\"\n{}<>&é中", min_size=1, max_size=40).filter(lambda s: s.strip())
names = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
json_scalars = st.one_of(st.integers(-1000, 1000), st.booleans(), words, st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False).map(lambda f: round(f, 3)))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(names, inner, max_size=3)), max_leaves=6)
arguments = st.dictionaries(names, json_values, max_size=4)

param_schema = st.sampled_from([
    {"type": "string", "description": "a string"},
    {"type": "integer"},
    {"type": "number"},
    {"type": "boolean"},
    {"type": "string", "enum": ["a", "b", "c"]},
    {"type": "array", "items": {"type": "string"}},
    {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "array", "items": {"type": "number"}}}, "required": ["x"]},
])


@st.composite
def tools(draw):
    tool_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    out = []
    for name in tool_names:
        props = draw(st.dictionaries(names, param_schema, max_size=4))
        required = sorted(draw(st.sets(st.sampled_from(sorted(props)), max_size=len(props)))) if props else []
        schema = {"type": "object", "properties": props}
        if required:
            schema["required"] = required
        out.append(ir.Tool(name, draw(words), schema))
    return out


@st.composite
def requests(draw):
    tool_list = draw(tools())
    messages: list[ir.Message] = []
    for turn in range(draw(st.integers(1, 4))):
        messages.append(ir.Message("user", [ir.Text(draw(words))]))
        if draw(st.booleans()):
            calls = [ir.ToolCall(f"call_{turn}_{i}", draw(st.sampled_from([t.name for t in tool_list])), draw(arguments))
                     for i in range(draw(st.integers(1, 2)))]
            lead = [ir.Text(draw(words))] if draw(st.booleans()) else []
            messages.append(ir.Message("assistant", lead + calls))
            results = [ir.ToolResult(c.id, c.name, [ir.Text(draw(words))], is_error=False) for c in calls]
            messages.append(ir.Message("tool", results))
        messages.append(ir.Message("assistant", [ir.Text(draw(words))]))
    messages.append(ir.Message("user", [ir.Text(draw(words))]))
    return ir.Request(
        model="m",
        messages=messages,
        system=[ir.Text(draw(words))] if draw(st.booleans()) else [],
        tools=tool_list,
        tool_choice=draw(st.sampled_from([None, ir.ToolChoice("auto"), ir.ToolChoice("required"), ir.ToolChoice("tool", tool_list[0].name)])),
        max_tokens=draw(st.integers(1, 100000)),
        temperature=draw(st.none() | st.sampled_from([0.0, 0.25, 0.5, 1.0])),
        top_p=draw(st.none() | st.sampled_from([0.1, 0.9, 1.0])),
        stop=draw(st.lists(names, max_size=2, unique=True)),
    )


def flatten(req: ir.Request) -> list[tuple]:
    """What every protocol must keep, in order, whatever message boundaries it uses."""
    out: list[tuple] = []
    for msg in req.messages:
        side = "assistant" if msg.role == "assistant" else "user"
        for part in msg.parts:
            if isinstance(part, ir.Text):
                out.append(("text", side, part.text))
            elif isinstance(part, ir.ToolCall):
                out.append(("call", part.name, part.arguments))
            elif isinstance(part, ir.ToolResult):
                out.append(("result", part.name, ir.text_of(part.content)))
    return out


def call_links(req: ir.Request) -> list[tuple[str, str]]:
    """(call name, name of the call the result's id points at) for every result."""
    calls = {p.id: p.name for m in req.messages for p in m.parts if isinstance(p, ir.ToolCall)}
    return [(p.name, calls.get(p.call_id, "?")) for m in req.messages for p in m.parts if isinstance(p, ir.ToolResult)]


@pytest.mark.parametrize("protocol", sorted(ADAPTERS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(original=requests())
def test_request_survives_encode_then_decode(protocol, original):
    adapter = ADAPTERS[protocol]
    provider = Provider("p", protocol, "http://127.0.0.1:1")
    call = adapter.encode_request(original, UpstreamTarget(provider, "m", "key"))
    route = Route(protocol, "chat", model="m", stream=False)
    decoded = adapter.decode_request(call.body, route, {})

    assert ir.text_of(decoded.system) == ir.text_of(original.system)
    assert flatten(decoded) == flatten(original)
    assert call_links(decoded) == [(n, n) for n, _ in call_links(original)]
    assert [(t.name, t.description, t.parameters) for t in decoded.tools] == [(t.name, t.description, t.parameters) for t in original.tools]
    assert decoded.max_tokens == original.max_tokens
    assert decoded.temperature == original.temperature
    if not (protocol == "claude" and original.temperature is not None):  # current Claude models take only one of the two
        assert decoded.top_p == original.top_p
    if protocol != "responses":  # the Responses API has no stop sequences
        assert decoded.stop == original.stop
    if original.tool_choice is not None and protocol != "ollama":  # Ollama has no tool_choice
        assert (decoded.tool_choice.mode, decoded.tool_choice.name) == (original.tool_choice.mode, original.tool_choice.name)
