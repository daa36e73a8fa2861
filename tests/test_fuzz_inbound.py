"""Hostile client input against every inbound endpoint of every registered protocol.

Hypothesis sends bodies of the right shape with wrong values, random JSON,
random bytes, truncated and deeply nested JSON, invalid UTF-8, duplicate keys,
huge strings, odd headers of absurd sizes and odd queries. Whatever arrives,
the answer is a success or a well-formed error in the shape of the protocol the
path belongs to, never a 500, and ccproxyd logs no ERROR for a client's mistake.

The wire readers at the top (``chat_request``, ``check_error``,
``read_answer``) follow each provider's documented shapes; the broken-upstream,
soak and security suites use them too.

``CCPROXY_FUZZ_EXAMPLES`` raises the example count (``make fuzz``); without it
the runs are short and derandomized so CI stays fast and repeatable.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from ccproxyd.protocols import ADAPTERS
from tests.conftest import ACCESS_KEY, PROTOCOLS, emulator_class, proxy_config

EXAMPLES = int(os.environ.get("CCPROXY_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 100,
    derandomize=not EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
SERVED = [p for p in PROTOCOLS if p in ADAPTERS]
AUTH = {"authorization": f"Bearer {ACCESS_KEY}"}
MAX_BODY = 256 * 1024

# ---------------------------------------------------------------- wire shapes (from the providers' documentation)


def chat_request(protocol: str, model: str, text: str = "Hello", stream: bool = False) -> tuple[str, dict[str, Any]]:
    """The path and body of a minimal chat request in ``protocol``."""
    if protocol == "openai":
        return "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    if protocol == "claude":
        return "/v1/messages", {"model": model, "max_tokens": 256, "messages": [{"role": "user", "content": text}], "stream": stream}
    if protocol == "gemini":
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"/v1beta/models/{model}:{method}", {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    return "/api/chat", {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}


CLAUDE_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                      404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error"}


def check_error_object(protocol: str, obj: Any, status: int | None = None) -> str:
    """Assert ``obj`` is ``protocol``'s error object (as a body or a mid-stream frame); its message."""
    if protocol == "openai":
        err = obj["error"]
        assert isinstance(err, dict) and isinstance(err["message"], str) and isinstance(err["type"], str), obj
        assert {"param", "code"} <= set(err), obj
        return err["message"]
    if protocol == "claude":
        assert obj["type"] == "error" and isinstance(obj["error"], dict), obj
        kind, message = obj["error"]["type"], obj["error"]["message"]
        assert isinstance(kind, str) and kind and isinstance(message, str), obj
        if status in CLAUDE_ERROR_TYPES:
            assert kind == CLAUDE_ERROR_TYPES[status], (status, obj)
        return message
    if protocol == "gemini":
        err = obj["error"]
        assert isinstance(err["code"], int) and isinstance(err["message"], str) and isinstance(err["status"], str), obj
        assert err["status"].isupper(), obj
        if status is not None:
            assert err["code"] == status, (status, obj)
        return err["message"]
    assert set(obj) == {"error"} and isinstance(obj["error"], str), obj
    return obj["error"]


def check_error(protocol: str, status: int, raw: bytes) -> str:
    """Assert an HTTP error response is ``protocol``'s error shape; its message."""
    assert 400 <= status < 600, status
    return check_error_object(protocol, orjson.loads(raw), status)


@dataclass
class Answer:
    text: str = ""
    finished: bool = False  # the protocol's normal end arrived (finish reason, [DONE], message_stop, done)
    error: str | None = None  # the message of a mid-stream error frame
    frames: int = 0


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) per server-sent event; asserts every line is a well-formed field."""
    text = raw.decode("utf-8")
    events = []
    for block in re.split(r"\r\n\r\n|\n\n|\r\r", text):
        name, data = None, []
        for line in block.splitlines():
            if not line or line.startswith(":"):
                continue
            key, sep, value = line.partition(":")
            assert sep, f"not an SSE field line: {line!r}"
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
            else:
                assert key in ("id", "retry"), line
        if data:
            events.append((name, "\n".join(data)))
    return events


def read_answer(protocol: str, stream: bool, raw: bytes, gemini_array: bool = False) -> Answer:
    """The text of a 200 answer in ``protocol``, asserting its framing and shapes as documented."""
    if not stream:
        return _read_body(protocol, orjson.loads(raw))
    if protocol == "ollama":
        return _read_ndjson(raw)
    if protocol == "gemini" and gemini_array:
        items = orjson.loads(raw)
        assert isinstance(items, list), raw[:200]
        return _fold(protocol, items)
    events = sse_events(raw)
    if protocol == "openai":
        assert all(name is None for name, _ in events), events[:3]
        done = bool(events) and events[-1][1] == "[DONE]"
        answer = _fold(protocol, [orjson.loads(data) for _, data in (events[:-1] if done else events)])
        assert "[DONE]" not in [d for _, d in events[:-1]], "frames after [DONE]"
        answer.finished = answer.finished and done
        assert not (done and answer.error), "[DONE] after an error frame"
        return answer
    if protocol == "claude":
        objs = []
        for name, data in events:
            obj = orjson.loads(data)
            assert name == obj["type"], (name, obj)  # every frame names its type twice
            objs.append(obj)
        return _fold(protocol, objs)
    return _fold(protocol, [orjson.loads(data) for _, data in events])


def _read_ndjson(raw: bytes) -> Answer:
    assert raw.endswith(b"\n"), raw[-100:]
    return _fold("ollama", [orjson.loads(line) for line in raw.split(b"\n") if line])


def _fold(protocol: str, frames: list[Any]) -> Answer:
    """Stream frames → Answer; an error frame must be the last one."""
    answer = Answer(frames=len(frames))
    for i, obj in enumerate(frames):
        assert isinstance(obj, dict), obj
        assert answer.error is None, f"frame after an error frame: {obj}"
        assert not (answer.finished and protocol in ("claude", "ollama")), f"frame after the end: {obj}"
        if _is_error_frame(protocol, obj):
            answer.error = check_error_object(protocol, obj)
            continue
        if protocol == "openai":
            assert obj["object"] in ("chat.completion.chunk", "text_completion"), obj
            for choice in obj["choices"]:
                answer.text += (choice["delta"].get("content") if "delta" in choice else choice["text"]) or ""
                answer.finished = answer.finished or bool(choice.get("finish_reason"))
        elif protocol == "claude":
            assert (obj["type"] == "message_start") == (i == 0), obj
            if obj["type"] == "content_block_delta" and obj["delta"]["type"] == "text_delta":
                answer.text += obj["delta"]["text"]
            answer.finished = obj["type"] == "message_stop"
        elif protocol == "gemini":
            for candidate in obj.get("candidates") or ():
                for part in (candidate.get("content") or {}).get("parts") or ():
                    if not part.get("thought"):
                        answer.text += part.get("text") or ""
                answer.finished = answer.finished or bool(candidate.get("finishReason"))
        else:
            answer.text += (obj.get("message") or {}).get("content") or obj.get("response") or ""
            answer.finished = obj["done"] is True
    return answer


def _is_error_frame(protocol: str, obj: dict[str, Any]) -> bool:
    return obj.get("type") == "error" if protocol == "claude" else "error" in obj


def _read_body(protocol: str, obj: Any) -> Answer:
    assert isinstance(obj, dict), obj
    if protocol == "openai":
        choice = obj["choices"][0]
        text = choice["text"] if obj["object"] == "text_completion" else choice["message"]["content"]
        return Answer(text or "", bool(choice["finish_reason"]), frames=1)
    if protocol == "claude":
        assert obj["type"] == "message" and obj["role"] == "assistant", obj
        text = "".join(b["text"] for b in obj["content"] if b["type"] == "text")
        return Answer(text, bool(obj["stop_reason"]), frames=1)
    if protocol == "gemini":
        return _fold("gemini", [obj])
    assert obj["done"] is True, obj
    return Answer(obj["message"]["content"] if "message" in obj else obj["response"], True, frames=1)


# ---------------------------------------------------------------- the proxy under attack

ENDPOINTS = [  # (protocol, method, path, what) for every inbound endpoint
    ("openai", "POST", "/v1/chat/completions", "chat"),
    ("openai", "GET", "/v1/models", "list"),
    ("claude", "POST", "/v1/messages", "chat"),
    ("claude", "POST", "/v1/messages?beta=true", "chat"),
    ("claude", "POST", "/v1/messages/count_tokens", "count"),
    ("gemini", "POST", "/v1beta/models/{model}:generateContent", "chat"),
    ("gemini", "POST", "/v1beta/models/{model}:streamGenerateContent?alt=sse", "chat"),
    ("gemini", "POST", "/v1beta/models/{model}:streamGenerateContent", "chat"),
    ("gemini", "POST", "/v1beta/models/{model}:countTokens", "count"),
    ("gemini", "GET", "/v1beta/models", "list"),
    ("gemini", "POST", "/v1/models/{model}:generateContent", "chat"),  # google-genai's v1 form
    ("ollama", "POST", "/api/chat", "chat"),
    ("ollama", "GET", "/api/tags", "list"),
    ("ollama", "POST", "/api/show", "show"),
    ("ollama", "GET", "/api/version", "version"),
    ("openai", "POST", "/v1/embeddings", "embed"),
    ("openai", "POST", "/v1/completions", "chat"),
    ("gemini", "POST", "/v1beta/models/{model}:embedContent", "embed"),
    ("gemini", "POST", "/v1/models/{model}:batchEmbedContents", "embed"),
    ("ollama", "POST", "/api/embed", "embed"),
    ("ollama", "POST", "/api/embeddings", "embed"),
    ("ollama", "POST", "/api/generate", "chat"),
    ("ollama", "GET", "/api/ps", "list"),
    ("ollama", "POST", "/api/pull", "pull"),
    ("ollama", "DELETE", "/api/delete", "store"),
]
SERVED_ENDPOINTS = [e for e in ENDPOINTS if e[0] in SERVED]
PREFIXES = ["", "/default", "/compat_mode", "/default/compat", "/nogroup", "/limited"]
LIMITED_KEY = "sk-ccproxy-limited-key"


@pytest.fixture
async def fuzz_proxy(start_upstream, start_proxy):
    upstreams = [await start_upstream(p) for p in SERVED if emulator_class(p)]
    config = proxy_config(upstreams, server={"max_body_bytes": MAX_BODY, "auth_failures_per_minute": 1_000_000})
    config["groups"]["limited"] = {"models": {"m-limited": [f"{upstreams[0].protocol}/limited-model"]}}
    config["keys"].append({"name": "limited", "key": LIMITED_KEY, "groups": ["limited"]})
    proxy = await start_proxy(config)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield proxy, session, [f"m-{u.protocol}" for u in upstreams]


@dataclass
class Sent:
    protocol: str
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: dict(AUTH))
    stream: bool | None = None  # None: as the body says


async def send(session: aiohttp.ClientSession, proxy_url: str, req: Sent) -> tuple[int, aiohttp.typedefs.LooseHeaders, bytes]:
    async with session.request(req.method, proxy_url + req.path, data=req.body, headers=req.headers,
                               skip_auto_headers=("Content-Type",), timeout=aiohttp.ClientTimeout(total=30)) as resp:
        return resp.status, resp.headers, await resp.read()


def assert_clean(req: Sent, status: int, headers: Any, raw: bytes, errors: list[logging.LogRecord]) -> None:
    """The contract for any client input: a success or the caller's error shape, no 500, no ERROR logged."""
    assert not errors, [r.getMessage() for r in errors]
    assert status != 500, raw[:300]
    if "x-request-id" not in headers:
        # refused by the HTTP parser before ccproxyd saw it: only for what HTTP itself forbids
        assert status in (400, 413, 431), (status, raw[:200])
        assert any(len(k) + len(v) > 8000 for k, v in req.headers.items()) or len(req.headers) > 100, (req.headers.keys(), raw[:200])
        return
    if status >= 400:
        if status == 404 and req.path.split("?")[0].startswith("/v1/models/") and orjson.loads(raw).get("type") != "error":
            # /v1/models/{id} is OpenAI's model retrieval as well as Gemini's v1 form: a path neither parses may be either's
            check_error("openai" if isinstance(orjson.loads(raw)["error"].get("type"), str) else "gemini", status, raw)
            return
        check_error(caller_protocol(req), status, raw)
        return
    assert status == 200, (status, raw[:200])
    path = req.path.split("?")[0]
    if path.endswith(("/models", "/tags", "/version", "/show", "count_tokens", ":countTokens", "/ps", "/embed", "/embeddings", "mbedContent", "mbedContents")):
        assert isinstance(orjson.loads(raw), dict)
        return
    if path.endswith("/pull"):  # Ollama's status lines
        assert all(isinstance(orjson.loads(line), dict) for line in raw.splitlines()), raw[:200]
        return
    stream = _streams(req)
    answer = read_answer(req.protocol, stream, raw, gemini_array=req.protocol == "gemini" and "alt=sse" not in req.path)
    assert answer.finished or answer.error is not None, raw[:300]


def caller_protocol(req: Sent) -> str:
    """The protocol whose shape the answer must have: the path's, except on the shared
    ``GET /v1/models``, where the Anthropic and Gemini SDKs give themselves away by a header."""
    if req.method == "GET" and req.path.split("?")[0].endswith("/v1/models"):
        names = {k.lower() for k in req.headers}
        for header, protocol in (("anthropic-version", "claude"), ("x-goog-api-key", "gemini")):
            if header in names and protocol in SERVED:
                return protocol
    return req.protocol


def _streams(req: Sent) -> bool:
    if req.protocol == "gemini":
        return "streamGenerateContent" in req.path
    if req.stream is not None:
        return req.stream
    try:
        body = orjson.loads(req.body)
    except orjson.JSONDecodeError:
        return False
    default = req.protocol == "ollama"  # Ollama streams unless told not to
    if not isinstance(body, dict) or body.get("stream") is None:
        return default
    return body["stream"] is True


async def exchange(fuzz: Any, caplog: pytest.LogCaptureFixture, req: Sent) -> tuple[int, bytes]:
    proxy, session, _ = fuzz
    before = len(caplog.records)
    status, headers, raw = await send(session, proxy.url, req)
    errors = [r for r in caplog.records[before:] if r.levelno >= logging.ERROR]
    assert_clean(req, status, headers, raw, errors)
    if currently_in_test_context():
        event(f"{caller_protocol(req)} {status}")  # see the spread with --hypothesis-show-statistics
    return status, raw


# ---------------------------------------------------------------- strategies

EXTREME_NUMBERS = [1e300, -1e300, 2**63, -(2**63) - 1, 2**64, 1.5, -1, 0, 1e-300, 2**53 + 1]
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(EXTREME_NUMBERS),
    st.text(max_size=30), st.sampled_from(["", "user", "assistant", "system", "tool", "model", "text", "image", "auto", "none"]),
)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


def rich_body(protocol: str, model: str) -> dict[str, Any]:
    """A valid request using most of the protocol's fields, for mutation."""
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    if protocol == "openai":
        return {"model": model, "temperature": 0.5, "top_p": 0.9, "max_tokens": 100, "seed": 1, "stop": ["END"], "stream": False,
                "tools": [{"type": "function", "function": {"name": "weather", "description": "w", "parameters": schema}}],
                "tool_choice": "auto", "response_format": {"type": "text"}, "stream_options": {"include_usage": True},
                "messages": [{"role": "system", "content": "be brief"},
                             {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}}]},
                             {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
                             {"role": "tool", "tool_call_id": "call_1", "content": "cold"}]}
    if protocol == "claude":
        return {"model": model, "max_tokens": 100, "system": [{"type": "text", "text": "be brief"}], "temperature": 0.5, "top_k": 5,
                "stop_sequences": ["END"], "stream": False, "metadata": {"user_id": "u1"},
                "tools": [{"name": "weather", "description": "w", "input_schema": schema}], "tool_choice": {"type": "auto"},
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": pixel}}]},
                             {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}]},
                             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "cold"}]}]}
    if protocol == "gemini":
        return {"systemInstruction": {"parts": [{"text": "be brief"}]},
                "generationConfig": {"temperature": 0.5, "topK": 5, "maxOutputTokens": 100, "stopSequences": ["END"]},
                "tools": [{"functionDeclarations": [{"name": "weather", "description": "w", "parameters": schema}]}],
                "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
                "contents": [{"role": "user", "parts": [{"text": "hi"}, {"inlineData": {"mimeType": "image/png", "data": pixel}}]},
                             {"role": "model", "parts": [{"functionCall": {"name": "weather", "args": {"city": "Oslo"}}}]},
                             {"role": "user", "parts": [{"functionResponse": {"name": "weather", "response": {"result": "cold"}}}]}]}
    return {"model": model, "stream": False, "think": False, "format": "json", "keep_alive": "5m",
            "options": {"temperature": 0.5, "top_k": 5, "num_predict": 100, "stop": ["END"], "seed": 1},
            "tools": [{"type": "function", "function": {"name": "weather", "description": "w", "parameters": schema}}],
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi", "images": [pixel]},
                         {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}]},
                         {"role": "tool", "content": "cold", "tool_name": "weather"}]}


def _dumps(value: Any) -> bytes:
    """JSON text of any value, integers beyond 64 bits included (orjson refuses those)."""
    return json.dumps(value).encode()


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside a JSON document."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


def _replace(doc: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def _chat_path(protocol: str, model: str, stream: bool) -> str:
    path, _ = chat_request(protocol, model, stream=stream)
    return path


# ---------------------------------------------------------------- the fuzz tests


@FUZZ
@given(data=st.data())
async def test_right_shape_with_wrong_values(fuzz_proxy, caplog, data):
    """A valid request with one or more fields replaced by random JSON (wrong types, nulls, odd values)."""
    _, _, models = fuzz_proxy
    protocol = data.draw(st.sampled_from(SERVED), "protocol")
    model = data.draw(st.sampled_from(models), "model")
    stream = data.draw(st.booleans(), "stream")
    body = rich_body(protocol, model)
    if protocol != "gemini":
        body["stream"] = stream
    for _ in range(data.draw(st.integers(0, 3), "mutations")):
        target = data.draw(st.sampled_from(_paths(body)), "field")
        _replace(body, target, data.draw(json_values, "value"))
    status, raw = await exchange(fuzz_proxy, caplog, Sent(protocol, "POST", _chat_path(protocol, model, stream), _dumps(body)))
    if status == 200:
        assert raw


@FUZZ
@given(data=st.data())
async def test_every_endpoint_with_random_bodies(fuzz_proxy, caplog, data):
    """Any endpoint, under any prefix, with random JSON, random bytes or an empty body."""
    _, _, models = fuzz_proxy
    protocol, method, path, _ = data.draw(st.sampled_from(SERVED_ENDPOINTS), "endpoint")
    model = data.draw(st.one_of(st.sampled_from(models), st.text(min_size=1, max_size=20)), "model")
    path = data.draw(st.sampled_from(PREFIXES), "prefix") + path.format(model=_safe_segment(model))
    body = data.draw(st.one_of(
        json_values.map(_dumps),
        st.dictionaries(st.sampled_from(["model", "messages", "contents", "stream", "max_tokens", "tools", "options", "name",
                                         "input", "prompt", "suffix", "requests", "content"]), json_values).map(_dumps),
        st.binary(max_size=300),
        st.just(b""),
    ), "body")
    await exchange(fuzz_proxy, caplog, Sent(protocol, method, path, body))


def _safe_segment(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="") or "x"


@FUZZ
@given(data=st.data())
async def test_malformed_json(fuzz_proxy, caplog, data):
    """Truncated JSON, invalid UTF-8, duplicate keys, deep nesting, huge strings and numbers."""
    _, _, models = fuzz_proxy
    protocol = data.draw(st.sampled_from(SERVED), "protocol")
    model = data.draw(st.sampled_from(models), "model")
    stream = data.draw(st.booleans(), "stream")
    path, body = chat_request(protocol, model, "hello", stream=stream)
    good = orjson.dumps(body)
    kind = data.draw(st.sampled_from(["truncated", "invalid_utf8", "duplicate_keys", "deep", "huge_string", "numbers", "gzip"]), "kind")
    headers = dict(AUTH)
    if kind == "truncated":
        raw = good[: data.draw(st.integers(0, len(good) - 1), "cut")]
    elif kind == "invalid_utf8":
        junk = data.draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]), "junk")
        raw = good.replace(b"hello", b"hel" + junk + b"lo")
    elif kind == "duplicate_keys":
        key = data.draw(st.sampled_from(sorted(body)), "key")
        raw = good[:-1] + b"," + _dumps(key) + b":" + _dumps(data.draw(json_values, "value")) + b"}"
    elif kind == "deep":
        depth = data.draw(st.integers(1, 3000), "depth")
        opener, closer = data.draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]), "container")
        raw = good[:-1] + b', "deep": ' + opener * depth + b"1" + closer * depth + b"}"
    elif kind == "huge_string":
        size = data.draw(st.sampled_from([10_000, 100_000, MAX_BODY - 1000, MAX_BODY + 10, 2 * MAX_BODY]), "size")
        raw = good.replace(b"hello", b"x" * size)
    elif kind == "numbers":
        number = data.draw(st.sampled_from([b"1e308", b"-1e308", b"1e999", b"18446744073709551615", b"18446744073709551616",
                                            b"-9223372036854775809", b"1.5", b"-0", b"0e0", b"NaN", b"Infinity", b"01", b"1.", b".5"]), "number")
        field_name = data.draw(st.sampled_from([b"max_tokens", b"temperature", b"seed", b"top_k", b"stream"]), "field")
        raw = good[:-1] + b', "' + field_name + b'": ' + number + b"}"
    else:
        raw = gzip.compress(good)
        if data.draw(st.booleans(), "corrupt"):
            raw = raw[:10] + bytes(b ^ 0x5A for b in raw[10:20]) + raw[20:]
        headers["content-encoding"] = "gzip"
    status, payload = await exchange(fuzz_proxy, caplog, Sent(protocol, "POST", path, raw, headers, stream if kind == "gzip" else None))
    if kind == "deep" and depth > 64:
        assert status == 400
    if kind == "huge_string" and size > MAX_BODY:
        assert status == 413


HEADER_NAMES = ["authorization", "x-api-key", "x-goog-api-key", "content-type", "content-encoding", "x-request-id", "anthropic-beta",
                "anthropic-version", "host", "x-forwarded-for", "x-forwarded-host", "accept", "user-agent", "traceparent", "origin", "x-junk"]


@FUZZ
@given(data=st.data())
async def test_hostile_headers_and_queries(fuzz_proxy, caplog, data):
    """Odd keys, odd header values up to absurd sizes, many headers, odd query strings."""
    _, _, models = fuzz_proxy
    protocol, method, path, _ = data.draw(st.sampled_from(SERVED_ENDPOINTS), "endpoint")
    model = data.draw(st.sampled_from(models), "model")
    path = data.draw(st.sampled_from(["", "/limited"]), "prefix") + path.format(model=model)
    query = data.draw(st.dictionaries(st.sampled_from(["key", "alt", "beta", "deep", "x"]), st.text(st.characters(codec="ascii"), max_size=20), max_size=3), "query")
    if query:
        path += ("&" if "?" in path else "?") + "&".join(f"{k}={_safe_segment(v)}" for k, v in query.items())
    printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
    headers = {name: value for name, value in data.draw(st.lists(st.tuples(st.sampled_from(HEADER_NAMES), printable), max_size=6), "headers")}
    key = data.draw(st.sampled_from([ACCESS_KEY, LIMITED_KEY, None]), "access key")  # LIMITED_KEY: group "limited" only
    if key:
        headers.setdefault("authorization", f"Bearer {key}")
    size = data.draw(st.sampled_from([0, 1000, 8000, 9000, 70_000]), "big header")
    if size:
        headers[data.draw(st.sampled_from(HEADER_NAMES), "big name")] = "a" * size
    for i in range(data.draw(st.sampled_from([0, 0, 50, 150]), "many")):
        headers[f"x-many-{i}"] = "v"
    _, body = chat_request(protocol, model)
    await exchange(fuzz_proxy, caplog, Sent(protocol, method, path, orjson.dumps(body) if method == "POST" else b"", headers))


# ---------------------------------------------------------------- what the fuzzers found, kept as regressions

CHAT = {"messages": [{"role": "user", "content": "x"}]}
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}
REGRESSIONS = [
    ("openai", "/v1/chat/completions", {"model": "m-openai", **CHAT, "max_tokens": 1e300}, 400),
    ("openai", "/v1/chat/completions", {"model": "m-openai", **CHAT, "seed": 1.8446744073709552e19}, 400),
    ("ollama", "/api/chat", {"model": "m-ollama", **CHAT, "options": {"num_predict": 1e300}}, 400),
    ("ollama", "/api/chat", {"model": "m-ollama", **CHAT, "options": {"seed": -1e300}}, 400),
    ("claude", "/v1/messages", {"model": "m-claude", "max_tokens": 1e300, **CHAT}, 400),
    ("openai", "/v1/chat/completions", {"model": "m-openai", **CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": "DEEP"}}]}, 400),
    ("gemini", "/v1beta/models/%0A:generateContent", GEMINI_BODY, 404),
    ("gemini", "/v1beta/models/m-gemini:generateContent", {**GEMINI_BODY, "generationConfig": {"maxOutputTokens": 1e300}}, 400),
    ("claude", "/v1/messages", {"model": "m-gemini", "max_tokens": 10, **CHAT, "tools": [
        {"name": "f", "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}, "required": True}}]}, (200, 400)),
]


@pytest.mark.parametrize("protocol,path,body,status", REGRESSIONS)
async def test_regressions(fuzz_proxy, caplog, protocol, path, body, status):
    if protocol not in SERVED:
        pytest.skip(f"no {protocol} adapter")
    raw = _dumps(body).replace(b'"DEEP"', b'{"a":' * 300 + b"1" + b"}" * 300)
    got, _ = await exchange(fuzz_proxy, caplog, Sent(protocol, "POST", path, raw))
    assert got in (status if isinstance(status, tuple) else (status,))


# ---------------------------------------------------------------- limits, deterministically


@pytest.mark.parametrize("protocol", SERVED)
async def test_nesting_depth_is_limited(fuzz_proxy, caplog, protocol):
    _, _, models = fuzz_proxy
    path, body = chat_request(protocol, models[0])
    nested: Any = 1
    for _ in range(63):  # the body itself is level 1: 64 levels in all is the default limit
        nested = [nested]
    status, raw = await exchange(fuzz_proxy, caplog, Sent(protocol, "POST", path, orjson.dumps({**body, "zz": nested})))
    if status >= 400:  # the upstream may refuse the unknown field, but ccproxyd let it through
        assert "deeper than" not in check_error(protocol, status, raw)
    status, raw = await exchange(fuzz_proxy, caplog, Sent(protocol, "POST", path, orjson.dumps({**body, "zz": [nested]})))
    assert status == 400 and "deeper than 64" in check_error(protocol, status, raw)


@pytest.mark.parametrize("padding", [0, 8192])
async def test_nesting_depth_is_limited_in_short_and_long_bodies(fuzz_proxy, caplog, padding):
    """A long body (a coding agent's) skips the bracket count and is walked at once: the same limit holds."""
    _, _, models = fuzz_proxy
    path, body = chat_request("openai", models[0])
    nested: Any = 1
    for _ in range(64):
        nested = [nested]
    sent = orjson.dumps({**body, "padding": "x" * padding, "zz": nested})
    assert (len(sent) > 4096) == bool(padding)
    status, raw = await exchange(fuzz_proxy, caplog, Sent("openai", "POST", path, sent))
    assert status == 400 and "deeper than 64" in check_error("openai", status, raw)


async def test_body_limit_is_enforced_before_the_body_is_read(fuzz_proxy, caplog):
    """A Content-Length over the limit is refused at once; a chunked body is cut off at the limit."""
    proxy, _, models = fuzz_proxy
    port = int(proxy.url.rsplit(":", 1)[1])
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ACCESS_KEY}\r\n"
            "Content-Type: application/json\r\n").encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + b"Content-Length: 10000000000\r\n\r\n{")  # ten gigabytes announced, one byte sent
    status_line = await asyncio.wait_for(reader.readline(), 5)
    assert status_line.startswith(b"HTTP/1.1 413"), status_line
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n")
    sent = 0
    chunk = b"x" * 16384
    answer = asyncio.ensure_future(reader.readline())
    while not answer.done() and sent < 64 * MAX_BODY:  # bounded: the answer must come long before
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sent += len(chunk)
        await writer.drain()
        await asyncio.sleep(0)
    status_line = await asyncio.wait_for(answer, 5)
    assert status_line.startswith(b"HTTP/1.1 413"), status_line
    assert sent < 8 * MAX_BODY, f"ccproxyd read {sent} bytes of a body limited to {MAX_BODY}"
    writer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_compressed_body_is_limited_after_decompression(fuzz_proxy, caplog):
    """A gzip bomb (small on the wire, huge inflated) is refused at the limit, not inflated whole."""
    proxy, session, models = fuzz_proxy
    bomb = gzip.compress(b'{"model": "m", "messages": [], "x": "' + b" " * (200 * MAX_BODY) + b'"}')

    async def body():
        for i in range(0, len(bomb), 4096):
            yield bomb[i : i + 4096]

    async with session.post(proxy.url + "/v1/chat/completions", data=body(), headers={**AUTH, "content-encoding": "gzip"}) as resp:
        assert resp.status == 413
        check_error("openai", resp.status, await resp.read())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_truncated_and_broken_http_framing(fuzz_proxy, caplog):
    """Bodies shorter than announced, broken chunked framing, garbage instead of HTTP: no ERROR, still serving."""
    proxy, session, models = fuzz_proxy
    port = int(proxy.url.rsplit(":", 1)[1])
    head = f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ACCESS_KEY}\r\n".encode()
    for raw in (head + b"Content-Length: 1000\r\n\r\n{\"model\":",
                head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
                head + b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"mod\r\n",
                head + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(256)),
                b"GET /v1/models HTTP/9.9\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 5)  # the server must close, answering or not
        writer.close()
        if answer:
            status = int(answer.split(b" ", 2)[1])
            assert status in (400, 413, 501, 505), answer[:200]
            if b"x-request-id" in answer.lower():
                check_error("ollama", status, answer.split(b"\r\n\r\n", 1)[1])
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    status, _, _ = await send(session, proxy.url, Sent("ollama", "GET", "/api/version"))
    assert status == 200
