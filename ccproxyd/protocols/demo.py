"""The ``demo`` provider: an upstream that answers inside ccproxyd, with no network and no key.

It exists so a fresh ``make run`` answers every client protocol on a machine
with no keys and no internet. It is an upstream like any other: its adapter
speaks the OpenAI Chat Completions wire, and :func:`answer` serves that wire in
process (the upstream client hands it every call to a ``demo`` provider), so a
Claude, Gemini or Ollama client's request goes through the same conversion
both ways as it would to a real OpenAI-compatible server.

The reply is deterministic: it names the model and echoes the last user text.
A tool call is made when the request offers tools and the last user message
says "tool" (or names an offered tool): the named tool, else the first, with
arguments filled from its schema. After a tool result it answers with the
result's text. Usage counts 4 characters a token.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, AsyncIterator

import orjson

from .base import UpstreamCall
from .openai import OpenAIAdapter

CHUNK_DELAY = 0.01  # seconds between streamed words, so a stream looks like one
_ECHO_LIMIT = 200
_TOOL_WORD = re.compile(r"\btools?\b", re.IGNORECASE)


class DemoAdapter(OpenAIAdapter):
    name = "demo"  # type: ignore[assignment]
    embeds_token_arrays = False


ADAPTER = DemoAdapter()


def answer(call: UpstreamCall) -> tuple[int, dict[str, str], AsyncIterator[bytes]]:
    """The demo upstream's HTTP answer to one Chat Completions call: status, headers, body chunks."""
    body = call.body
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    model = str(body.get("model") or "demo")
    tools = [t.get("function", {}) for t in body.get("tools") or () if isinstance(t, dict)]
    text, call_made = _reply(messages, tools, model)
    prompt_tokens = max(1, len(orjson.dumps(messages)) // 4)
    completion_tokens = max(1, len(text or orjson.dumps(call_made)) // 4)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
    reply_id = f"chatcmpl-demo-{len(messages)}"
    if call.stream:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = _stream(reply_id, model, text, call_made, usage if include_usage else None)
        headers = {"content-type": "text/event-stream"}
    else:
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if call_made:
            message["tool_calls"] = [call_made]
        whole = {"id": reply_id, "object": "chat.completion", "created": int(time.time()), "model": model,
                 "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if call_made else "stop"}], "usage": usage}
        chunks = _one(orjson.dumps(whole))
        headers = {"content-type": "application/json"}
    return 200, headers, chunks


def _reply(messages: list[Any], tools: list[dict[str, Any]], model: str) -> tuple[str, dict[str, Any] | None]:
    """The reply text, or a tool call (OpenAI shape) when the last user text asks for one."""
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    if last.get("role") == "tool":
        name = _tool_name(messages, last.get("tool_call_id"))
        return f"The {name} tool answered: {_text(last.get('content'))[:_ECHO_LIMIT]}", None
    said = next((_text(m.get("content")) for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), "")
    names = [t.get("name") for t in tools if isinstance(t.get("name"), str)]
    if names and (_TOOL_WORD.search(said) or any(n in said for n in names)):
        tool = next((t for t in tools if t.get("name") in said), tools[0])
        arguments = orjson.dumps(_arguments(tool.get("parameters") or {})).decode()
        return "", {"id": f"call_demo_{len(messages)}", "type": "function", "function": {"name": tool["name"], "arguments": arguments}}
    echo = said.strip()[:_ECHO_LIMIT] or "(nothing)"
    return f"Hello from the ccproxyd demo upstream, model {model}. You said: {echo}", None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _tool_name(messages: list[Any], call_id: Any) -> str:
    for m in messages:
        for c in (m.get("tool_calls") or ()) if isinstance(m, dict) else ():
            if isinstance(c, dict) and c.get("id") == call_id:
                return str((c.get("function") or {}).get("name") or "tool")
    return "tool"


def _arguments(schema: dict[str, Any]) -> dict[str, Any]:
    """One deterministic value per required property (every property when none is required)."""
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    wanted = [p for p in schema.get("required") or () if p in properties] or list(properties)
    return {name: _value(properties[name] if isinstance(properties[name], dict) else {}) for name in wanted}


def _value(schema: dict[str, Any]) -> Any:
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    return {"integer": 1, "number": 1, "boolean": True, "array": [], "object": {}}.get(kind if isinstance(kind, str) else "", "demo")


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _stream(reply_id: str, model: str, text: str, call_made: dict[str, Any] | None, usage: dict[str, Any] | None) -> AsyncIterator[bytes]:
    created = int(time.time())

    def frame(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        chunk = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    yield frame({"role": "assistant", "content": ""})
    if call_made:
        fn = call_made["function"]
        yield frame({"tool_calls": [{"index": 0, "id": call_made["id"], "type": "function", "function": {"name": fn["name"], "arguments": ""}}]})
        yield frame({"tool_calls": [{"index": 0, "function": {"arguments": fn["arguments"]}}]})
    for word in re.findall(r"\S+\s*", text):
        await asyncio.sleep(CHUNK_DELAY)
        yield frame({"content": word})
    yield frame({}, "tool_calls" if call_made else "stop")
    if usage is not None:
        yield b"data: " + orjson.dumps({"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": model,
                                        "choices": [], "usage": usage}) + b"\n\n"
    yield b"data: [DONE]\n\n"
