"""Tool names every upstream accepts: safe names upstream, the client's own names back.

End to end: the official Anthropic SDK sends tools named like MCP tools (a
90-character one, a dotted one) to a Claude and to a Gemini emulator, whose
validators refuse what their providers refuse; the emulated model calls the
tools by the names it was given, the client must see its own names, and the
next turn's history must reach the upstream under the same safe names.
"""

from __future__ import annotations

import re
from typing import Any, AsyncIterator

import pytest

from ccproxyd import ir
from ccproxyd.protocols import ADAPTERS
from ccproxyd.toolnames import NameMap, ToolNameRule, fit_request, plan_names, safe_name
from tests.clients import DRIVERS, ToolSpec
from tests.conftest import proxy_config
from tests.emulators.base import Reply, ToolCallScript

LONG = "mcp__knowledge_base__" + "search_documents_by_semantic_similarity_and_return_ranked_pass_"
LONG = LONG + "x" * (90 - len(LONG))
DOTTED = "mcp__my.server__get-page"
VALID = "get_weather"
SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
TOOLS = [ToolSpec(LONG, "tool-long", SCHEMA), ToolSpec(DOTTED, "tool-dotted", SCHEMA), ToolSpec(VALID, "tool-valid", SCHEMA)]

CLAUDE_RULE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # Anthropic tool-use docs
GEMINI_RULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,63}$")  # Gemini FunctionDeclaration.name
RULES = {"claude": CLAUDE_RULE, "gemini": GEMINI_RULE}


def _declared(body: dict[str, Any]) -> dict[str, str]:
    """Description → tool name, as the upstream received them."""
    found = {}
    for tool in body.get("tools") or []:
        for decl in tool.get("functionDeclarations") or [tool]:
            found[decl["description"]] = decl["name"]
    return found


def _history_names(body: dict[str, Any]) -> list[str]:
    """Names of the calls and results in the history the upstream received."""
    names = []
    for message in body.get("contents") or body.get("messages") or []:
        for part in message.get("parts") or (message["content"] if isinstance(message.get("content"), list) else []):
            if "functionCall" in part:
                names.append(part["functionCall"]["name"])
            elif "functionResponse" in part:
                names.append(part["functionResponse"]["name"])
            elif part.get("type") == "tool_use":
                names.append(part["name"])
    return names


def _model_calls_every_tool(emulator: Any) -> None:
    """The emulated model calls each tool by the name it was declared under, then answers."""
    turns = iter(range(100))

    def next_reply() -> Reply:
        if next(turns) > 0:
            return Reply(text="All three answered.")
        declared = _declared(emulator.last.body)
        calls = [ToolCallScript(declared[d], {"q": d}) for d in ("tool-long", "tool-dotted", "tool-valid")]
        return Reply(text="", tool_calls=calls)

    emulator.next_reply = next_reply


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("upstream_protocol", ["claude", "gemini"])
async def test_claude_client_tool_round_trip_with_names_the_upstream_refuses(
    start_upstream: Any, start_proxy: Any, upstream_protocol: str, stream: bool
) -> None:
    upstream = await start_upstream(upstream_protocol)
    proxy = await start_proxy(proxy_config([upstream]))
    await _round_trip(proxy.url, upstream.emulator, upstream_protocol, stream)


@pytest.mark.parametrize("upstream_protocol", ["claude", "gemini"])
async def test_the_daemon_renames_too(start_upstream: Any, run_daemon: Any, upstream_protocol: str) -> None:
    upstream = await start_upstream(upstream_protocol)
    daemon = run_daemon(proxy_config([upstream]))
    await _round_trip(daemon.url, upstream.emulator, upstream_protocol, stream=True)


async def _round_trip(url: str, emulator: Any, upstream_protocol: str, stream: bool) -> None:
    """Two turns of a Claude client using TOOLS; the checks of the upstream's and the client's view."""
    _model_calls_every_tool(emulator)
    driver = DRIVERS["claude"](url, f"m-{upstream_protocol}")
    try:
        turns: list[tuple[str, Any]] = [("user", "Use every tool.")]
        first = await driver.chat(turns, tools=TOOLS, stream=stream)
        sent = _declared(emulator.last.body)
        # the upstream saw only names its protocol accepts; valid names untouched
        assert all(RULES[upstream_protocol].match(n) for n in sent.values()), sent
        assert sent["tool-valid"] == VALID
        assert sent["tool-long"] != LONG and len(sent["tool-long"]) <= 64
        if upstream_protocol == "gemini":
            assert sent["tool-dotted"] == DOTTED  # dots are fine for Gemini
        else:
            assert sent["tool-dotted"] not in (DOTTED, sent["tool-long"])
        # the client saw its own names
        assert first.finish == "tool_calls"
        assert [(c.name, c.arguments) for c in first.calls] == [
            (LONG, {"q": "tool-long"}), (DOTTED, {"q": "tool-dotted"}), (VALID, {"q": "tool-valid"})
        ]

        turns += [("assistant", first), ("results", [(c, f"result of {c.arguments['q']}") for c in first.calls])]
        final = await driver.chat(turns, tools=TOOLS, stream=stream)
        assert final.text == "All three answered."
        body = emulator.last.body
        # the history went upstream under the same safe names as the tools of this turn
        assert _declared(body) == sent
        history = _history_names(body)
        assert set(history) == set(sent.values()) and all(RULES[upstream_protocol].match(n) for n in history)
        assert "result of tool-long" in repr(body)
    finally:
        await driver.close()


@pytest.fixture
async def to_claude(start_upstream: Any, start_proxy: Any) -> AsyncIterator[tuple[Any, Any]]:
    """The Anthropic SDK (raw) through ccproxyd to the Claude emulator, and TOOLS in Claude's shape."""
    upstream = await start_upstream("claude")
    proxy = await start_proxy(proxy_config([upstream]))
    driver = DRIVERS["claude"](proxy.url, "m-claude")
    yield driver.client, upstream.emulator
    await driver.close()


def _claude_tools() -> list[dict[str, Any]]:
    return [{"name": t.name, "description": t.description, "input_schema": t.parameters} for t in TOOLS]


async def test_claude_fields_of_a_renamed_tool_stay_with_it(to_claude: tuple[Any, Any]) -> None:
    client, emulator = to_claude
    tools = _claude_tools()
    tools[1]["cache_control"] = {"type": "ephemeral"}  # the dotted one
    await client.messages.create(model="m-claude", max_tokens=64, messages=[{"role": "user", "content": "hi"}], tools=tools)
    sent = {t["description"]: t for t in emulator.last.body["tools"]}
    assert sent["tool-dotted"]["name"] != DOTTED and sent["tool-dotted"]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in sent["tool-long"]


async def test_count_tokens_sends_safe_names(to_claude: tuple[Any, Any]) -> None:
    client, emulator = to_claude
    await client.messages.count_tokens(model="m-claude", messages=[{"role": "user", "content": "hi"}], tools=_claude_tools())
    counted = _declared(emulator.last.body)
    assert emulator.last.path.endswith("/count_tokens")
    assert set(counted) == {"tool-long", "tool-dotted", "tool-valid"}
    assert all(CLAUDE_RULE.match(n) for n in counted.values()), counted


# ---------------------------------------------------------------- units

CLAUDE = ADAPTERS["claude"].tool_names
GEMINI = ADAPTERS["gemini"].tool_names
OPENAI = ADAPTERS["openai"].tool_names


def test_adapters_state_their_rules() -> None:
    assert CLAUDE is not None and GEMINI is not None and OPENAI is not None
    assert ADAPTERS["ollama"].tool_names is None  # Ollama documents no rule: names pass as they are
    assert ADAPTERS["responses"].tool_names == OPENAI
    assert CLAUDE.accepts("a" * 64) and not CLAUDE.accepts("a" * 65) and not CLAUDE.accepts("a.b")
    assert GEMINI.accepts("a.b:c-d") and not GEMINI.accepts("1abc") and not GEMINI.accepts("-abc")
    assert OPENAI.accepts("get-page_v2") and not OPENAI.accepts("get page") and not OPENAI.accepts("")


def test_safe_names() -> None:
    rule = ToolNameRule("A-Za-z0-9_-", 64)
    assert safe_name("my.server/get", rule) == "my_server_get"  # short: only the characters change
    long = safe_name("x" * 90, rule)
    assert len(long) == 64 and rule.accepts(long) and long == safe_name("x" * 90, rule)
    assert safe_name("x" * 91, rule) != long
    assert safe_name("1st", GEMINI) == "_1st" and GEMINI.accepts("_1st")  # type: ignore[arg-type]
    # a cleaned name that another tool already has gets a hash instead
    clash = safe_name("a.b", rule, {"a_b"})
    assert clash != "a_b" and clash.startswith("a_b_") and rule.accepts(clash)


def test_plan_is_collision_free_and_keeps_valid_names() -> None:
    names = ["a.b", "a_b", "a:b", "x" * 100, "x" * 100 + "y", "ok"]
    plan = plan_names(names, CLAUDE)  # type: ignore[arg-type]
    assert set(plan) == {"a.b", "a:b", "x" * 100, "x" * 100 + "y"}
    final = [plan.get(n, n) for n in names]
    assert len(set(final)) == len(names) and all(CLAUDE.accepts(n) for n in final)  # type: ignore[union-attr]
    assert plan == plan_names(list(reversed(names)), CLAUDE)  # type: ignore[arg-type]


async def test_fit_request_renames_everywhere_and_restores_events() -> None:
    req = ir.Request(
        "m",
        [
            ir.Message("user", [ir.Text("hi")]),
            ir.Message("assistant", [ir.ToolCall("c1", DOTTED, {"q": 1})]),
            ir.Message("tool", [ir.ToolResult("c1", DOTTED, [ir.Text("r")])]),
        ],
        tools=[ir.Tool(DOTTED), ir.Tool(VALID)],
        tool_choice=ir.ToolChoice("tool", DOTTED),
    )
    fitted, names = fit_request(req, CLAUDE)
    assert isinstance(names, NameMap)
    safe = fitted.tools[0].name
    assert CLAUDE.accepts(safe) and fitted.tools[1].name == VALID  # type: ignore[union-attr]
    assert fitted.tool_choice is not None and fitted.tool_choice.name == safe
    assert fitted.messages[1].parts[0].name == safe and fitted.messages[2].parts[0].name == safe  # type: ignore[union-attr]
    assert req.tools[0].name == DOTTED and req.messages[1].parts[0].name == DOTTED  # type: ignore[union-attr]  # the client's request is not changed

    async def upstream() -> Any:
        for event in (ir.ResponseStart(), ir.ToolCallStart("c2", safe), ir.ToolCallStart("c3", "unknown"), ir.ToolCallEnd()):
            yield event

    back = [e.name async for e in names.restore(upstream()) if isinstance(e, ir.ToolCallStart)]
    assert back == [DOTTED, "unknown"]
    assert fit_request(req, None) == (req, None)
    assert fit_request(ir.Request("m", [], tools=[ir.Tool(VALID)]), CLAUDE)[1] is None


# ---------------------------------------------------------------- Codex-style namespace tools


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("upstream_protocol", ["claude", "gemini"])
async def test_responses_namespace_tools_fit_the_upstream_and_come_back_as_namespace_calls(
    start_upstream: Any, start_proxy: Any, upstream_protocol: str, stream: bool
) -> None:
    """A namespace's functions become ``{namespace}__{name}`` upstream: with a dotted namespace and a long
    name that flat name breaks Claude's and Gemini's rules, and must still come back as the client's call."""
    import openai

    from tests.conftest import ACCESS_KEY

    namespace, name = "mcp__my.docs-server", "search_documents_by_semantic_similarity_and_rank_them"
    upstream = await start_upstream(upstream_protocol)

    def next_reply() -> Reply:
        declared = _declared(upstream.emulator.last.body)
        return Reply(text="", tool_calls=[ToolCallScript(declared["namespaced"], {"q": "ccproxyd"})])

    upstream.emulator.next_reply = next_reply
    proxy = await start_proxy(proxy_config([upstream]))
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=ACCESS_KEY, max_retries=0)
    tools = [{"type": "namespace", "name": namespace, "description": "docs",
              "tools": [{"type": "function", "name": name, "description": "namespaced", "parameters": SCHEMA}]}]
    request = {"model": f"m-{upstream_protocol}", "input": "find it", "tools": tools, "store": False}
    if stream:
        async with client.responses.stream(**request) as events:
            answer = await events.get_final_response()
    else:
        answer = await client.responses.create(**request)
    await client.close()
    sent = _declared(upstream.emulator.last.body)["namespaced"]
    assert RULES[upstream_protocol].match(sent) and sent != f"{namespace}__{name}"
    call = next(item for item in answer.output if item.type == "function_call")
    assert call.name == name and getattr(call, "namespace", None) == namespace, call
