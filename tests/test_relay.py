"""The same-protocol relay (issue 18) gives byte for byte what the general path gives, on the same inputs.

A plain OpenAI Chat Completions request to an OpenAI upstream skips the unified model: ``PlainChat`` builds
the upstream's body and the client's answer straight from the JSON. Here both paths run on the same inputs:

* generated client bodies, plain and every way of being almost plain: the upstream call must be the same
  bytes, and the relay must decline every body the general path refuses or converts;
* generated upstream answers: the client's answer must be the same bytes with the same token counts, and
  the relay must decline whatever the general path refuses, estimates or reads as more than text;
* through the server, requests × answers × configs, once with the relay and once without it: what the
  upstream receives, what the client gets and the access line must be the same.

The generated cases are 6,000 per test from fixed seeds. ``make fuzz`` (``CCPROXY_FUZZ_EXAMPLES``) runs
100 times that many per example asked, from a random seed that a failure names.
"""

from __future__ import annotations

import os
import random
import re
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from ccproxyd import ir
from ccproxyd.config import parse_config
from ccproxyd.answer_events import Whole
from ccproxyd.paths import Route
from ccproxyd.protocols import ADAPTERS
from ccproxyd.protocols import openai as openai_protocol
from ccproxyd.protocols.base import UpstreamTarget
from ccproxyd.shaping import shape_request, shapes_nothing
from ccproxyd.toolnames import fit_request
from ccproxyd.usage import UsageFiller
from tests.conftest import ACCESS_KEY

ADAPTER = ADAPTERS["openai"]
ROUTE = Route("openai", "chat")
_CONFIG = parse_config({"server": {"listen": "127.0.0.1:0", "stats": False},
                        "providers": {"p": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1", "api_keys": ["sk-test-000000001"]}},
                        "groups": {"default": {"models": {"m": ["p/up-model"]}}}}, "<test>", env={})
GROUP, PROVIDER = _CONFIG.groups["default"], _CONFIG.providers["p"]
TARGET = UpstreamTarget(PROVIDER, "up-model", "sk-test-000000001", "req-1")
TEXTS = ("hi", "", "Hello, world", "ünïcødé ✓", "a\nb")
_FUZZ = int(os.environ.get("CCPROXY_FUZZ_EXAMPLES", "0"))
CASES = _FUZZ * 100 if _FUZZ else 6000


def _seed(fixed: int) -> int:
    return random.randrange(2**32) if _FUZZ else fixed


# ---------------------------------------------------------------- generated client bodies

def _message(rng: random.Random) -> Any:
    if rng.random() < 0.03:
        return rng.choice([None, "user", 5, []])
    msg: dict[str, Any] = {}
    role = rng.choice(["system", "developer", "user", "user", "assistant", "assistant", "tool", "function", "critic", 5, None])
    if role is not None:
        msg["role"] = role
    content = rng.choice([*TEXTS, *TEXTS, None, [{"type": "text", "text": "part"}], [], 7])
    if content is not None or rng.random() < 0.5:
        msg["content"] = content
    for key, values in (("name", ["bob", 3]), ("tool_calls", [None, [], [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]]),
                        ("reasoning_content", [None, "", "thinking"]), ("refusal", [None]), ("tool_call_id", ["c1"])):
        if rng.random() < 0.06:
            msg[key] = rng.choice(values)
    return msg


_INTS = [1, 256, 0, -1, 2**63, 2**63 - 1, 1.0, 1.5, True, "5", None]
_NUMBERS = [0, 1, 0.5, 2, 2**62, -0.0, True, "0.5", None]
_OPTIONAL: list[tuple[str, list[Any]]] = [
    ("max_tokens", _INTS), ("max_completion_tokens", _INTS), ("temperature", _NUMBERS), ("top_p", _NUMBERS), ("seed", _INTS),
    ("stop", ["x", "", [], ["a", "b"], ["a", 1], 5, None]), ("stream", [False, None, True, 0, "no"]),
    ("stream_options", [{"include_usage": True}, None]), ("n", [2]), ("user", ["u-1"]), ("metadata", [{"k": "v"}]),
    ("logprobs", [True]), ("web_search_options", [{}]), ("service_tier", ["auto"]),
    ("tools", [None, [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]]),
    ("tool_choice", [None, "auto", "none"]), ("response_format", [None, {"type": "json_object"}]),
    ("reasoning_effort", [None, "low", 3]), ("parallel_tool_calls", [None, True, "x"]), ("functions", [None, [{"name": "f"}]]),
    ("function_call", [None, "auto"]),
]


def client_body(rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {}
    model = rng.choice(["m", "m", "", 5, None])
    if model is not None:
        body["model"] = model
    if rng.random() < 0.97:
        body["messages"] = [_message(rng) for _ in range(rng.randint(0, 5))] if rng.random() < 0.97 else rng.choice(["hi", None, {}])
    for key, values in rng.sample(_OPTIONAL, rng.randint(0, 6)):
        body[key] = rng.choice(values)
    items = list(body.items())
    rng.shuffle(items)  # the fields' order is the client's; extras keep it
    return dict(items)


def plain_body(rng: random.Random) -> dict[str, Any]:
    """A body the relay should take, so the comparisons below are not all of declined ones."""
    roles = ["system", "developer", "user", "assistant"]
    body: dict[str, Any] = {"model": "m", "messages": [{"role": rng.choice(roles), "content": rng.choice(TEXTS)} for _ in range(rng.randint(1, 5))]}
    for key, values in (("max_tokens", [1, 256]), ("max_completion_tokens", [64, None]), ("temperature", [0, 0.7, 1]), ("top_p", [1, 0.9]),
                        ("seed", [42]), ("stop", ["x", ["a", "b"], []]), ("stream", [False]), ("user", ["u-1"]), ("n", [1])):
        if rng.random() < 0.3:
            body[key] = rng.choice(values)
    return body


def general_call(body: dict[str, Any]) -> tuple[Any, ...] | str:
    """The general path's upstream call for ``body`` (shaping that changes nothing, as the relay requires),
    or the error it refuses the body with."""
    try:
        req = ADAPTER.decode_request(body, ROUTE, {})
        shaped = shape_request(req, GROUP, PROVIDER, "m")
        ADAPTER.check_request(shaped)
        shaped, _ = fit_request(shaped, ADAPTER.tool_names, ADAPTER.rename_tools_in_extras)
        call = ADAPTER.encode_request(shaped, TARGET)
    except Exception as e:  # noqa: BLE001 - whatever the general path raises, the relay must have declined
        return f"{type(e).__name__}: {e}"
    return call.url, call.headers, orjson.dumps(call.body), call.stream


def test_relayed_calls_are_the_general_paths_bytes() -> None:
    assert shapes_nothing(GROUP, PROVIDER, "m")
    seed = _seed(1801)
    rng = random.Random(seed)
    relayed = declined = refused = 0
    for i in range(CASES):
        body = plain_body(rng) if i % 3 == 0 else client_body(rng)
        general = general_call(body)
        relay = ADAPTER.relay(body, ROUTE, {})
        if isinstance(general, str):
            refused += 1
            assert relay is None, f"seed {seed}: relayed a body the general path refuses ({general}): {body}"
            continue
        if relay is None:
            declined += 1
            continue
        relayed += 1
        call = relay.call(TARGET)
        assert (call.url, call.headers, orjson.dumps(call.body), call.stream) == general, (seed, body)
        assert relay.model == body["model"]
        assert relay.request() == ADAPTER.decode_request(body, ROUTE, {}), (seed, body)
    assert relayed > CASES / 4 and declined > CASES / 20 and refused > CASES / 6, (seed, relayed, declined, refused)


@pytest.mark.parametrize("body, expected", [
    ({"model": "m", "messages": [{"role": "system", "content": "a"}, {"role": "developer", "content": ""}, {"role": "system", "content": "b"},
                                 {"role": "user", "content": ""}, {"role": "system", "content": ""}, {"role": "assistant", "content": ""}]},
     {"model": "up-model", "messages": [{"role": "system", "content": "ab"}, {"role": "system", "content": ""}, {"role": "assistant", "content": None}]}),
    ({"n": 2, "model": "m", "stream_options": {"include_usage": True}, "max_completion_tokens": None, "max_tokens": 9, "temperature": 1,
      "stop": "x", "messages": [{"role": "user", "content": "hi", "name": "bob"}]},
     {"model": "up-model", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 9, "temperature": 1.0, "stop": ["x"], "n": 2}),
])
def test_relayed_call_examples(body: dict[str, Any], expected: dict[str, Any]) -> None:
    """Two bodies worked by hand: what the general path does to system prompts, empty messages and field names."""
    relay = ADAPTER.relay(body, ROUTE, {})
    assert relay is not None
    assert relay.call(TARGET).body == expected
    assert general_call(body)[2] == orjson.dumps(expected)


@pytest.mark.parametrize("body", [
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
    {"model": "m", "messages": [{"role": "tool", "tool_call_id": "c", "content": "ok"}]},
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": []},
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10.0},
])
def test_relay_declines_what_needs_the_unified_model(body: dict[str, Any]) -> None:
    assert ADAPTER.relay(body, ROUTE, {}) is None
    assert ADAPTER.relay({"model": "m", "prompt": "hi"}, Route("openai", "complete"), {}) is None


# ---------------------------------------------------------------- generated upstream answers

_TOKENS = [12, 0, None, 1.5, "3", True, 2**40]
_DETAILS = [None, {}, {"cached_tokens": 3}, {"cached_tokens": None}, {"reasoning_tokens": 4}, [], "x", 0]


def upstream_answer(rng: random.Random) -> bytes:
    if rng.random() < 0.04:
        return rng.choice([b"", b"not json", b"[]", b"null", b'{"error": {"message": "boom", "type": "server_error"}}'])
    message: dict[str, Any] = {"role": "assistant"}
    for key, values in (("content", [*TEXTS, *TEXTS, None, ["a"], 5]), ("reasoning_content", ["", "think", 5, None]), ("reasoning", ["", "why"]),
                        ("tool_calls", [None, [], [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]]),
                        ("refusal", [None, "no"])):
        if key == "content" or rng.random() < 0.12:
            message[key] = rng.choice(values)
    choice: dict[str, Any] = {"index": 0, "message": rng.choice([message] * 12 + [None, {}, "str"]), "logprobs": None}
    if rng.random() < 0.9:
        choice["finish_reason"] = rng.choice(["stop", "stop", "length", "tool_calls", "function_call", "content_filter", "weird", None, 5, [1]])
    if rng.random() < 0.05:
        choice["text"] = rng.choice(["", "completion text"])
    data: dict[str, Any] = {"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "up-model",
                            "choices": rng.choice([[choice]] * 12 + [[choice, {"index": 1, "message": {"content": "second"}}], [], None, "x", [5]]),
                            "system_fingerprint": "fp"}
    if rng.random() < 0.93:
        usage: dict[str, Any] = {"prompt_tokens": rng.choice(_TOKENS), "completion_tokens": rng.choice(_TOKENS)} if rng.random() < 0.95 else {}
        usage["total_tokens"] = 19
        for key in ("prompt_tokens_details", "completion_tokens_details"):
            if rng.random() < 0.5:
                usage[key] = rng.choice(_DETAILS)
        data["usage"] = usage if rng.random() < 0.97 else rng.choice([None, "x"])
    if rng.random() < 0.6:  # the common case: every field an answer should have, well typed
        data["choices"] = [{"index": 0, "message": {"role": "assistant", "content": rng.choice(TEXTS)}, "logprobs": None, "finish_reason": "stop"}]
        data["usage"] = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19, **({"prompt_tokens_details": {"cached_tokens": 2}} if rng.random() < 0.5 else {})}
    return orjson.dumps(data)


def _usage_counts(usage: ir.Usage) -> tuple[Any, ...]:
    return usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.cache_creation_input_tokens, usage.reasoning_tokens


def general_answer(client_req: ir.Request, body: bytes) -> tuple[bytes, tuple[Any, ...]] | str:
    """The general path's answer to an upstream's whole body (``_open_events``' ``Whole``, collected and
    encoded) and the usage counted from it, or why it is not one: an error, or usage it had to estimate."""
    estimated: list[bool] = []
    try:
        whole = Whole(ADAPTER.decode_response(body), _CONFIG, UsageFiller(client_req, lambda: estimated.append(True)))
        response = whole.collected(client_req.model)
        answer = orjson.dumps(ADAPTER.encode_response(response, client_req))
    except Exception as e:  # noqa: BLE001 - whatever the general path raises, the relay must have declined
        return f"{type(e).__name__}: {e}"
    return ("estimated" if estimated else answer), _usage_counts(response.usage)


@pytest.fixture
def fixed_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer's new id and creation time made the same on both paths."""
    monkeypatch.setattr(ir, "random_hex", lambda chars=32: "0" * chars)
    monkeypatch.setattr(openai_protocol, "time", SimpleNamespace(time=lambda: 1796000000.5))  # this module's clock only


def test_relayed_answers_are_the_general_paths_bytes(fixed_ids: None) -> None:
    seed = _seed(1802)
    rng = random.Random(seed)
    relayed = declined = 0
    for i in range(CASES):
        body = plain_body(rng)
        relay = ADAPTER.relay(body, ROUTE, {})
        assert relay is not None
        upstream = upstream_answer(rng)
        general = general_answer(relay.request(), upstream)
        answered = relay.answer(upstream)
        if answered is None:
            declined += 1
            continue
        relayed += 1
        assert not isinstance(general, str), f"seed {seed}: relayed an answer the general path refuses ({general}): {upstream!r}"
        assert general[0] != "estimated", f"seed {seed}: relayed an answer whose usage the general path estimates: {upstream!r}"
        assert (orjson.dumps(answered[0]), _usage_counts(answered[1])) == general, (seed, upstream)
    assert relayed > CASES / 2 and declined > CASES / 6, (seed, relayed, declined)


# ---------------------------------------------------------------- through the server, with and without the relay

REQUESTS = [
    {"model": "m", "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}], "max_tokens": 256},
    {"model": "m", "messages": [{"role": "developer", "content": "a"}, {"role": "user", "content": ""}, {"role": "system", "content": "b"},
                                {"role": "assistant", "content": ""}, {"role": "user", "content": "ü ✓", "name": "bob"}],
     "max_completion_tokens": 9, "temperature": 1, "top_p": 0.5, "seed": 3, "stop": "x", "stream": False, "user": "u",
     "stream_options": {"include_usage": True}, "metadata": {"k": "v"}},
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
    {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "reasoning_effort": "low"},
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"},
]
ANSWERS = [
    {"id": "u", "object": "chat.completion", "created": 1, "model": "up-model", "system_fingerprint": "fp",
     "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!", "refusal": None}, "logprobs": None, "finish_reason": "stop"}],
     "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19, "prompt_tokens_details": {"cached_tokens": 4},
               "completion_tokens_details": {"reasoning_tokens": 2}}},
    {"choices": [{"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": "length"},
                 {"index": 1, "message": {"role": "assistant", "content": "second"}, "finish_reason": "stop"}],
     "usage": {"prompt_tokens": 3, "completion_tokens": 0}},
    {"choices": [{"index": 0, "message": {"role": "assistant", "content": "I think", "reasoning_content": "because"}, "finish_reason": "stop"}],
     "usage": {"prompt_tokens": 3, "completion_tokens": 5}},
    {"choices": [{"index": 0, "message": {"role": "assistant", "content": None,
                                          "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
                  "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 3, "completion_tokens": 5}},
    {"choices": [{"index": 0, "message": {"role": "assistant", "content": "no usage"}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}},
    {"error": {"message": "upstream says no", "type": "server_error"}},
]
CONFIGS = {
    "plain": {},
    "provider params": {"providers": {"params": {"user": "from-provider", "metadata": {"team": "a"}}}},
    "temperature ratio": {"group": {"temperature_ratio": 0.5}},
    "prompt injection": {"group": {"prompt_injection": "enhance", "prompt_text": "Answer briefly."}},
    "max_tokens cap": {"providers": {"max_tokens": 5}},
    "routing rule": {"group": {"routes": [{"when": {"context_tokens_over": 5}, "use": "long"}]}},
    "compat": {"group": {"tool_mode": "compat"}},
}


class RecordingUpstream:
    """An OpenAI upstream that answers every call with ``answer`` and keeps what it received."""

    def __init__(self) -> None:
        self.answer: dict[str, Any] = {}
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        self.received.append((request.path, headers, await request.read()))
        return web.json_response(self.answer, status=500 if "error" in self.answer else 200)


def _config(url: str, variant: dict[str, Any]) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:0", "stats": False},
        "keys": [{"name": "tests", "key": ACCESS_KEY}],
        "providers": {"up": {"protocol": "openai", "base_url": url + "/v1", "api_keys": ["sk-upstream-key-0001"], **variant.get("providers", {})}},
        "groups": {"default": {"models": {"m": ["up/up-model"], "long": ["up/long-model"]}, **variant.get("group", {})}},
    }


async def _exchange(proxy_url: str, session: Any, body: dict[str, Any]) -> tuple[Any, ...]:
    headers = {"authorization": f"Bearer {ACCESS_KEY}", "x-request-id": "relaytest0000000000000000000001"}
    async with session.post(proxy_url + "/v1/chat/completions", json=body, headers=headers) as resp:
        kept = {k.lower(): v for k, v in resp.headers.items() if k.lower().startswith("x-ccproxy") and k.lower() != "x-ccproxy-overhead-ms"}
        return resp.status, resp.headers.get("content-type"), kept, await resp.read()


@pytest.mark.parametrize("variant", list(CONFIGS))
async def test_server_answers_alike_with_and_without_the_relay(variant: str, aiohttp_server: Any, aiohttp_client: Any, start_proxy: Any,
                                                               fixed_ids: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    upstream = RecordingUpstream()
    server = await aiohttp_server(upstream.app)
    # one proxy for each path: a failed call cools its target, and each path is to see the same state
    proxies = [await start_proxy(_config(str(server.make_url("")).rstrip("/"), CONFIGS[variant])) for _ in range(2)]
    relayed_calls: list[str] = []
    call = openai_protocol.PlainChat.call
    monkeypatch.setattr(openai_protocol.PlainChat, "call", lambda self, target: relayed_calls.append(target.model) or call(self, target))
    relay = type(ADAPTER).relay
    async with aiohttp.ClientSession() as session:
        for body in REQUESTS:
            for answer in ANSWERS:
                upstream.answer = answer
                seen = []
                for proxy, use_relay in zip(proxies, (True, False)):
                    monkeypatch.setattr(type(ADAPTER), "relay", relay if use_relay else lambda *a: None)
                    upstream.received.clear()
                    caplog.clear()
                    with caplog.at_level("INFO", logger="ccproxyd.access"):
                        got = await _exchange(proxy.url, session, body)
                    lines = [re.sub(r" dur=\S+ up=\S+", "", r.getMessage()) for r in caplog.records if r.name == "ccproxyd.access"]
                    seen.append((got, list(upstream.received), lines))
                assert seen[0] == seen[1], (variant, body, answer)
    if variant in ("plain", "provider params", "routing rule"):
        assert relayed_calls, "the relay was never taken"
    else:
        assert not relayed_calls, f"the relay was taken with {variant}"


async def test_relay_fails_over_like_the_general_path(aiohttp_server: Any, start_proxy: Any, fixed_ids: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A relayed attempt that fails hands over to the next target as any attempt does; the second target's
    answer is relayed too."""
    failing, answering = RecordingUpstream(), RecordingUpstream()
    failing.answer, answering.answer = ANSWERS[-1], ANSWERS[0]
    urls = [str((await aiohttp_server(u.app)).make_url("")).rstrip("/") for u in (failing, answering)]
    config = _config(urls[0], {})
    config["providers"]["second"] = {**config["providers"]["up"], "base_url": urls[1] + "/v1"}
    config["groups"]["default"]["models"]["m"] = ["up/up-model", "second/second-model"]
    proxies = [await start_proxy(config) for _ in range(2)]
    relay = type(ADAPTER).relay
    seen = []
    async with aiohttp.ClientSession() as session:
        for proxy, use_relay in zip(proxies, (True, False)):
            monkeypatch.setattr(type(ADAPTER), "relay", relay if use_relay else lambda *a: None)
            failing.received.clear(), answering.received.clear()
            got = await _exchange(proxy.url, session, REQUESTS[0])
            seen.append((got, list(failing.received), list(answering.received)))
    assert seen[0] == seen[1]
    status, _, headers, answer = seen[0][0]
    assert status == 200 and headers["x-ccproxy-target"] == "second/second-model", seen[0]
    assert orjson.loads(answer)["choices"][0]["message"]["content"] == "Hello!"
    assert orjson.loads(seen[0][2][0][2])["model"] == "second-model"
