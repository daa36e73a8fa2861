"""Routing rules on the unified request: each adapter fills in what rules read, and one rule set chooses alike for all protocols."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from ccproxyd import ir, rules
from ccproxyd.config import ConfigError, RouteRule, When, parse_config
from ccproxyd.paths import parse_path
from ccproxyd.protocols import ADAPTERS
from tests import rule_requests as rr

PROTOCOLS = ("claude", "openai", "gemini", "ollama")


def decode(protocol: str, kind: str) -> ir.Request:
    path, body = rr.body(protocol, kind)
    return ADAPTERS[protocol].decode_request(body, route_of(path), {})


def route_of(path: str) -> Any:
    url = urlsplit(path)
    return parse_path("POST", url.path, dict(parse_qsl(url.query)))


def config(routes: list[dict[str, Any]], aliases: tuple[str, ...] = rr.ALIASES) -> Any:
    return parse_config({
        "providers": {"up": {"protocol": "openai", "base_url": "http://127.0.0.1:9"}},
        "groups": {"default": {"models": {a: ["up/m"] for a in aliases}, "routes": routes}},
    }, "ccproxy.toml", env={})


def errors(routes: list[dict[str, Any]], aliases: tuple[str, ...] = rr.ALIASES) -> list[str]:
    with pytest.raises(ConfigError) as e:
        config(routes, aliases)
    return e.value.errors


# ---------------------------------------------------------------- what the adapters fill in


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_adapter_says_whether_thinking_was_asked_for(protocol: str) -> None:
    assert decode(protocol, "thinking").wants_thinking
    assert decode(protocol, "agent").wants_thinking
    assert not decode(protocol, "plain").wants_thinking
    assert not decode(protocol, "image").wants_thinking


def test_thinking_switched_off_or_an_effort_alone_is_not_thinking() -> None:
    _, body = rr.claude("plain")
    claude = ADAPTERS["claude"].decode_request
    route = route_of("/v1/messages")
    assert not claude({**body, "thinking": {"type": "disabled"}}, route, {}).wants_thinking
    assert not claude({**body, "output_config": {"effort": "low"}}, route, {}).wants_thinking  # effort without thinking
    assert claude({**body, "thinking": {"type": "enabled", "budget_tokens": 2048}}, route, {}).wants_thinking
    _, body = rr.openai("plain")
    assert not ADAPTERS["openai"].decode_request({**body, "reasoning_effort": "none"}, route_of("/v1/chat/completions"), {}).wants_thinking
    _, body = rr.ollama("plain")
    assert not ADAPTERS["ollama"].decode_request({**body, "think": False}, route_of("/api/chat"), {}).wants_thinking
    assert ADAPTERS["ollama"].decode_request({**body, "think": "high"}, route_of("/api/chat"), {}).wants_thinking
    path, body = rr.gemini("plain")
    off = {**body, "generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}}
    assert not ADAPTERS["gemini"].decode_request(off, route_of(path), {}).wants_thinking


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_adapter_names_the_offered_web_search(protocol: str) -> None:
    req = decode(protocol, "search")
    assert any(name.startswith("web_search") for name in rules.offered_tools(req)), list(rules.offered_tools(req))
    assert "WebSearch" in list(rules.offered_tools(decode(protocol, "agent")))
    assert not list(rules.offered_tools(decode(protocol, "plain")))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_images_are_found_wherever_they_are(protocol: str) -> None:
    assert rules.has_images(decode(protocol, "image"))
    assert not rules.has_images(decode(protocol, "agent"))
    in_result = ir.Request("m", [ir.Message("tool", [ir.ToolResult("c1", "Read", [ir.Image("image/png", rr.PNG)])])])
    assert rules.has_images(in_result)  # Claude Code's Read tool on a screenshot


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_long_history_is_over_the_threshold_and_the_others_are_not(protocol: str) -> None:
    assert ir.estimate_tokens(decode(protocol, "long")) > 70_000
    assert ir.estimate_tokens(decode(protocol, "agent")) < 60_000


# ---------------------------------------------------------------- choosing


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", list(rr.KINDS))
def test_one_rule_set_chooses_alike_for_every_protocol(protocol: str, kind: str) -> None:
    group = config(rr.RULES).groups["default"]
    rule = rules.choose(group.routes, decode(protocol, kind), protocol)
    assert (rule.label if rule else None) == rr.expected(protocol, kind)


def when(**conditions: Any) -> When:
    return When(**{k: tuple(v) if isinstance(v, list) else v for k, v in conditions.items()})


@pytest.mark.parametrize(("condition", "matching", "other"), [
    (when(model=["claude-*haiku*"]), "background", "agent"),
    (when(thinking=True), "thinking", "plain"),
    (when(thinking=False), "plain", "thinking"),
    (when(context_tokens_over=60000), "long", "agent"),
    (when(images=True), "image", "plain"),
    (when(images=False), "plain", "image"),
    (when(tools_include=["WebSearch"]), "agent", "plain"),
    (when(tools_include=["web_search*"]), "search", "agent"),
    (when(tools_include=["Nope", "Bas?"]), "agent", "search"),  # any pattern, any tool
    (when(stream=False), "batch", "plain"),
    (when(stream=True), "plain", "batch"),
])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_each_condition_alone(condition: When, matching: str, other: str, protocol: str) -> None:
    assert rules.matches(condition, decode(protocol, matching), protocol)
    assert not rules.matches(condition, decode(protocol, other), protocol)


def test_the_protocol_condition_and_combinations_need_every_condition() -> None:
    req = decode("gemini", "agent")
    assert rules.matches(when(protocol=["gemini", "ollama"]), req, "gemini")
    assert not rules.matches(when(protocol=["claude"]), req, "gemini")
    assert rules.matches(when(thinking=True, tools_include=["WebSearch"], protocol=["gemini"]), req, "gemini")
    assert not rules.matches(when(thinking=True, tools_include=["WebSearch"], stream=False), req, "gemini")
    assert rules.matches(When(), req, "gemini")  # when = {} matches everything


def test_no_rule_matching_leaves_the_requested_alias() -> None:
    assert rules.choose((), decode("claude", "agent"), "claude") is None
    only = (RouteRule(1, "fast", when(model=["gpt-*"])),)
    assert rules.choose(only, decode("claude", "agent"), "claude") is None


def test_the_token_estimate_is_made_once_and_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    req = decode("claude", "long")
    calls = []
    original = ir.estimate_tokens
    monkeypatch.setattr(ir, "estimate_tokens", lambda r: calls.append(r) or original(r))
    three = tuple(RouteRule(i, "long", when(context_tokens_over=n)) for i, n in enumerate((10**6, 10**5, 100), 1))
    assert rules.choose(three, req, "claude").number == 3
    assert len(calls) == 1
    assert rules.choose((RouteRule(1, "fast", when(model=["x"], context_tokens_over=1)),), req, "claude") is None
    assert len(calls) == 1  # the model condition failed first


# ---------------------------------------------------------------- check


def test_the_rule_set_is_valid_and_numbered_from_one() -> None:
    group = config(rr.RULES).groups["default"]
    assert [r.number for r in group.routes] == list(range(1, len(rr.RULES) + 1))
    assert group.routes[0].when == When(model=("claude-*haiku*",)) and group.routes[0].label == "1:fast"


def test_check_rejects_an_unknown_condition() -> None:
    found = errors([{"when": {"model": "x", "long_context_threshold": 60000}, "use": "fast"}])
    assert found == ["ccproxy.toml: groups.default.routes[0].when.long_context_threshold: unknown condition; expected one of "
                     "model, thinking, context_tokens_over, images, tools_include, protocol, stream"]


def test_check_rejects_an_alias_the_group_does_not_have() -> None:
    found = errors([{"when": {"thinking": True}, "use": "reasoner"}], aliases=("fast", "claude-*"))
    assert found == ["ccproxy.toml: groups.default.routes[0].use: alias 'reasoner' does not exist in group 'default' (aliases: fast, claude-*)"]
    assert config([{"when": {"thinking": True}, "use": "claude-opus"}], aliases=("fast", "claude-*"))  # a pattern alias matches it


@pytest.mark.parametrize(("earlier", "later"), [
    ({"thinking": True}, {"thinking": True}),  # the same conditions
    ({}, {"images": True}),  # when = {} matches everything
    ({"context_tokens_over": 60000}, {"context_tokens_over": 100000}),
    ({"thinking": True}, {"thinking": True, "images": True}),
    ({"model": "claude-*haiku*"}, {"model": "claude-3-5-haiku-latest"}),
    ({"protocol": ["claude", "openai"]}, {"protocol": "claude", "stream": True}),
    ({"tools_include": ["web_search*", "WebSearch"]}, {"tools_include": "WebSearch"}),
])
def test_check_rejects_a_rule_an_earlier_one_shadows(earlier: dict[str, Any], later: dict[str, Any]) -> None:
    found = errors([{"when": {"stream": False}, "use": "batch"}, {"when": earlier, "use": "fast"}, {"when": later, "use": "long"}])
    assert found == ["ccproxy.toml: groups.default.routes[2]: can never match: rule 2 (routes[1]) comes first "
                     "and matches every request this rule matches"]


@pytest.mark.parametrize(("earlier", "later"), [
    ({"thinking": True, "images": True}, {"thinking": True}),  # narrower first: fine
    ({"context_tokens_over": 100000}, {"context_tokens_over": 60000}),
    ({"model": "claude-3-5-haiku-latest"}, {"model": "claude-*haiku*"}),
    ({"thinking": True}, {"thinking": False}),
    ({"protocol": "claude"}, {"protocol": ["claude", "openai"]}),
])
def test_check_accepts_rules_that_can_still_match(earlier: dict[str, Any], later: dict[str, Any]) -> None:
    assert len(config([{"when": earlier, "use": "fast"}, {"when": later, "use": "long"}]).groups["default"].routes) == 2


@pytest.mark.parametrize(("rule", "message"), [
    ({"use": "fast"}, "groups.default.routes[0]: when is missing (write when = {} for a rule that always matches)"),
    ({"when": {}}, "groups.default.routes[0]: use is missing: the alias this rule picks"),
    ({"when": {}, "use": "fast", "if": 1}, "groups.default.routes[0].if: unknown key"),
    ({"when": "thinking", "use": "fast"}, 'groups.default.routes[0].when: expected a table of conditions, e.g. { model = "claude-*haiku*" }'),
    ({"when": {"thinking": "yes"}, "use": "fast"}, "groups.default.routes[0].when.thinking: expected true or false, got str"),
    ({"when": {"context_tokens_over": -1}, "use": "fast"}, "groups.default.routes[0].when.context_tokens_over: must be at least 0"),
    ({"when": {"model": []}, "use": "fast"}, "groups.default.routes[0].when.model: expected a pattern or a non-empty list of patterns"),
    ({"when": {"protocol": "grpc"}, "use": "fast"}, "groups.default.routes[0].when.protocol: unknown protocol 'grpc'; expected one of openai, claude, gemini, ollama, responses"),
])
def test_check_names_every_malformed_rule(rule: dict[str, Any], message: str) -> None:
    assert errors([rule]) == [f"ccproxy.toml: {message}"]


def test_routes_must_be_an_array_of_tables() -> None:
    assert errors({"when": {}, "use": "fast"}) == ["ccproxy.toml: groups.default.routes: expected an array of tables ([[groups.NAME.routes]])"]  # type: ignore[arg-type]


# ---------------------------------------------------------------- stats


def test_a_stats_file_from_before_routes_gains_the_route_column(tmp_path: Any) -> None:
    import sqlite3

    from ccproxyd import stats
    from ccproxyd.observe import RequestRecord

    path = tmp_path / stats.DB_NAME
    old = sqlite3.connect(path)
    old.executescript(stats._SCHEMA)
    old.execute("ALTER TABLE requests DROP COLUMN route")  # the table as version 1 wrote it
    old.execute("ALTER TABLE requests DROP COLUMN usage_estimated")
    old.execute("PRAGMA user_version=1")
    old.execute("INSERT INTO requests (ts, request_id, action, compat, stream, status, cancelled, failovers, duration, upstream_seconds) "
                "VALUES (1e9, 'old', 'chat', 0, 0, 200, 0, 0, 0.1, 0.1)")
    old.commit()
    old.close()
    db = stats.connect(path)
    db.execute(stats._INSERT, stats.row_of(RequestRecord("new", group="default", alias="claude-haiku-4-5", route="1:fast", action="chat", status=200)))
    assert db.execute("PRAGMA user_version").fetchone()[0] == stats.SCHEMA_VERSION
    db.close()
    assert {r["route"]: r["requests"] for r in stats.summarize(path, None, "route")} == {"-": 1, "default rule 1:fast": 1}


def test_the_responses_adapter_fills_in_thinking_and_hosted_tools_too() -> None:
    decode_responses = ADAPTERS["responses"].decode_request
    route = route_of("/v1/responses")
    plain = {"model": rr.MAIN_MODEL, "input": "hello"}
    assert not decode_responses(plain, route, {}).wants_thinking
    assert decode_responses({**plain, "reasoning": {"effort": "high"}}, route, {}).wants_thinking
    assert not decode_responses({**plain, "reasoning": {"effort": "none"}}, route, {}).wants_thinking
    searching = decode_responses({**plain, "tools": [{"type": "web_search"}]}, route, {})
    assert list(rules.offered_tools(searching)) == ["web_search"]
    assert rules.choose(config([{"when": {"tools_include": "web_search*", "protocol": "responses"}, "use": "search"}])
                        .groups["default"].routes, searching, "responses").use == "search"
