"""OpenAI Chat Completions, both as the client's protocol and as an upstream's."""

from __future__ import annotations

import time
import uuid
from typing import Any, AsyncIterator, Mapping

import orjson

from .. import ir
from ..errors import ClientError, ProxyError, UpstreamError
from ..paths import Route
from ..streams import iter_sse, sse_frame
from .base import Adapter, ModelInfo, StreamEncoder, UpstreamCall, UpstreamTarget
from ..toolnames import ToolNameRule
from .fields import check, integer, number, opt, req, split_data_url, string_list

FINISH_FROM_OPENAI: dict[str, ir.FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}
FINISH_TO_OPENAI = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter", "error": "stop", "other": "stop"}
ERROR_TYPES = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "request_too_large": "invalid_request_error",
    "rate_limit": "rate_limit_error",
    "timeout": "timeout_error",
    "overloaded": "server_error",
    "unavailable": "server_error",
    "bad_gateway": "server_error",
    "api_error": "server_error",
}
# Fields the unified model carries; everything else stays in extras["openai"].
_KNOWN = frozenset(
    {"model", "messages", "tools", "tool_choice", "max_tokens", "max_completion_tokens", "temperature", "top_p",
     "seed", "stop", "stream", "response_format", "reasoning_effort", "parallel_tool_calls", "functions", "function_call"}
)


# ---------------------------------------------------------------- request decoding


def _decode_content(content: Any, path: str) -> list[ir.Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [ir.Text(content)] if content else []
    check(content, list, path)
    parts: list[ir.Part] = []
    for i, item in enumerate(content):
        at = f"{path}[{i}]"
        check(item, dict, at)
        kind = item.get("type")
        if kind == "text":
            parts.append(ir.Text(req(item, "text", str, at + ".")))
        elif kind == "refusal":
            parts.append(ir.Text(req(item, "refusal", str, at + ".")))
        elif kind == "image_url":
            image = req(item, "image_url", (dict, str), at + ".")
            url = image if isinstance(image, str) else req(image, "url", str, at + ".image_url.")
            parts.append(_image_from_url(url))
        else:
            raise ClientError(f"{at}.type {kind!r} is not supported (text, image_url)", param=f"{at}.type")
    return parts


def _image_from_url(url: str) -> ir.Image:
    inline = split_data_url(url)
    if inline:
        return ir.Image(media_type=inline[0], data=inline[1])
    return ir.Image(url=url)


def _decode_tool_calls(calls: Any, path: str) -> list[ir.Part]:
    check(calls, list, path)
    parts: list[ir.Part] = []
    for i, call in enumerate(calls):
        at = f"{path}[{i}]"
        check(call, dict, at)
        fn = req(call, "function", dict, at + ".")
        name = req(fn, "name", str, at + ".function.")
        arguments = opt(fn, "arguments", (str, dict), at + ".function.") or "{}"
        args = arguments if isinstance(arguments, dict) else ir.parse_arguments(arguments)
        parts.append(ir.ToolCall(opt(call, "id", str, at + ".") or ir.new_call_id(), name, args))
    return parts


def _decode_messages(raw: list[Any]) -> tuple[list[ir.Part], list[ir.Message]]:
    system: list[ir.Part] = []
    messages: list[ir.Message] = []
    for i, msg in enumerate(raw):
        at = f"messages[{i}]"
        check(msg, dict, at)
        role = req(msg, "role", str, at + ".")
        content = msg.get("content")
        if role in ("system", "developer"):
            parts = _decode_content(content, at + ".content")
            if messages:
                messages.append(ir.Message("system", parts))
            else:
                system.extend(parts)
        elif role == "user":
            messages.append(ir.Message("user", _decode_content(content, at + ".content")))
        elif role == "assistant":
            parts = []
            reasoning = opt(msg, "reasoning_content", str, at + ".")
            if reasoning:
                parts.append(ir.Reasoning(reasoning))
            parts.extend(_decode_content(content, at + ".content"))
            if msg.get("tool_calls") is not None:
                parts.extend(_decode_tool_calls(msg["tool_calls"], at + ".tool_calls"))
            messages.append(ir.Message("assistant", parts))
        elif role in ("tool", "function"):
            call_id = opt(msg, "tool_call_id", str, at + ".") or ""
            name = opt(msg, "name", str, at + ".") or ""
            result = ir.ToolResult(call_id, name, _decode_content(content, at + ".content"))
            messages.append(ir.Message("tool", [result]))
        else:
            raise ClientError(f"{at}.role {role!r} is not one of system, developer, user, assistant, tool", param=f"{at}.role")
    ir.link_tool_results(messages)
    return system, messages


def _decode_tools(raw: Any) -> list[ir.Tool]:
    check(raw, list, "tools")
    tools = []
    for i, tool in enumerate(raw):
        at = f"tools[{i}]"
        check(tool, dict, at)
        fn = req(tool, "function", dict, at + ".")
        params = opt(fn, "parameters", dict, at + ".function.") or {"type": "object", "properties": {}}
        tools.append(ir.Tool(req(fn, "name", str, at + ".function."), opt(fn, "description", str, at + ".function.") or "", params))
    return tools


def _decode_tool_choice(raw: Any) -> ir.ToolChoice | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        if raw not in ("auto", "none", "required"):
            raise ClientError(f"tool_choice {raw!r} is not one of auto, none, required", param="tool_choice")
        return ir.ToolChoice(raw)  # type: ignore[arg-type]
    check(raw, dict, "tool_choice")
    fn = req(raw, "function", dict, "tool_choice.")
    return ir.ToolChoice("tool", req(fn, "name", str, "tool_choice.function."))


def _decode_response_format(raw: Any) -> ir.ResponseFormat | None:
    if raw is None:
        return None
    check(raw, dict, "response_format")
    kind = raw.get("type")
    if kind == "json_schema":
        spec = req(raw, "json_schema", dict, "response_format.")
        return ir.ResponseFormat("json_schema", opt(spec, "schema", dict) or {}, opt(spec, "name", str))
    if kind in ("json_object", "text"):
        return ir.ResponseFormat(kind)
    raise ClientError(f"response_format.type {kind!r} is not one of text, json_object, json_schema", param="response_format.type")


# ---------------------------------------------------------------- request encoding


def _image_url(image: ir.Image) -> str:
    if image.data is not None:
        return f"data:{image.media_type or 'image/png'};base64,{image.data}"
    return image.url or ""


def _encode_content(parts: list[ir.Part]) -> str | list[dict[str, Any]]:
    if all(isinstance(p, ir.Text) for p in parts):
        return ir.text_of(parts)
    out: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, ir.Text):
            out.append({"type": "text", "text": p.text})
        elif isinstance(p, ir.Image):
            out.append({"type": "image_url", "image_url": {"url": _image_url(p)}})
    return out


def _encode_messages(req: ir.Request) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if req.system:
        out.append({"role": "system", "content": ir.text_of(req.system)})
    for msg in req.messages:
        if msg.role == "system":
            out.append({"role": "system", "content": ir.text_of(msg.parts)})
        elif msg.role == "assistant":
            calls = [p for p in msg.parts if isinstance(p, ir.ToolCall)]
            entry: dict[str, Any] = {"role": "assistant", "content": ir.text_of(msg.parts) or None}
            if calls:
                entry["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": orjson.dumps(c.arguments).decode()}}
                    for c in calls
                ]
            out.append(entry)
        else:
            # user and tool messages: tool results become tool messages; tool-result images and the rest a user message
            rest: list[ir.Part] = []
            for p in msg.parts:
                if isinstance(p, ir.ToolResult):
                    text = ir.text_of(p.content)
                    out.append({"role": "tool", "tool_call_id": p.call_id, "content": f"Error: {text}" if p.is_error and not text.startswith("Error") else text})
                    rest.extend(i for i in p.content if isinstance(i, ir.Image))
                else:
                    rest.append(p)
            if rest:
                out.append({"role": "user", "content": _encode_content(rest)})
    return out


# ---------------------------------------------------------------- responses


def _usage_from_openai(raw: dict[str, Any] | None) -> ir.Usage:
    if not isinstance(raw, dict):
        return ir.Usage()
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    return ir.Usage(
        input_tokens=raw.get("prompt_tokens"),
        output_tokens=raw.get("completion_tokens"),
        cached_input_tokens=prompt_details.get("cached_tokens"),
        reasoning_tokens=completion_details.get("reasoning_tokens"),
        raw=raw,
    )


def _usage_to_openai(usage: ir.Usage) -> dict[str, Any]:
    prompt, completion = usage.input_tokens or 0, usage.output_tokens or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens or 0},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens or 0},
    }


def _finish(raw: str | None, saw_tool_call: bool) -> ir.Finish:
    reason = FINISH_FROM_OPENAI.get(raw or "", "other" if raw else "stop")
    if saw_tool_call and reason == "stop":
        reason = "tool_calls"  # some compatible servers say "stop" after calling tools
    return ir.Finish(reason, raw)


class OpenAIStreamDecoder:
    """Chunk deltas → IR events. Tool-call fragments are keyed by ``index``."""

    def __init__(self) -> None:
        self.blocks = ir.BlockBuilder()
        self.started = False
        self.finish_raw: str | None = None
        self.usage: ir.Usage | None = None
        self.call_index: int | None = None
        self.saw_call = False

    def feed(self, chunk: dict[str, Any]) -> list[ir.Event]:
        out: list[ir.Event] = []
        if not self.started:
            self.started = True
            out.append(ir.ResponseStart(chunk.get("id"), chunk.get("model")))
        if chunk.get("usage"):
            self.usage = _usage_from_openai(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                out.extend(self.blocks.reasoning(reasoning))
            if isinstance(delta.get("content"), str) and delta["content"]:
                out.extend(self.blocks.text(delta["content"]))
            for call in delta.get("tool_calls") or ():
                out.extend(self._call_fragment(call))
            if choice.get("finish_reason"):
                self.finish_raw = choice["finish_reason"]
        return out

    def _call_fragment(self, call: dict[str, Any]) -> list[ir.Event]:
        out: list[ir.Event] = []
        index = call.get("index", 0)
        fn = call.get("function") or {}
        if index != self.call_index:
            self.call_index = index
            self.saw_call = True
            out.extend(self.blocks.tool_start(call.get("id") or ir.new_call_id(), fn.get("name") or ""))
        if fn.get("arguments"):
            out.extend(self.blocks.tool_args(fn["arguments"]))
        return out

    def close(self) -> list[ir.Event]:
        out = self.blocks.close()
        if self.usage:
            out.append(self.usage)
        out.append(ir.Finished(_finish(self.finish_raw, self.saw_call)))
        return out


class OpenAIStreamEncoder(StreamEncoder):
    content_type = "text/event-stream"

    def __init__(self, req: ir.Request) -> None:
        self.id = "chatcmpl-" + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = req.model
        options = req.extras.get("openai", {}).get("stream_options")
        self.include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        self.call_index = -1
        self.usage = ir.Usage()
        self.started = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse_frame(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
        )

    def _role(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        return self._chunk({"role": "assistant", "content": ""})

    def encode(self, event: ir.Event) -> bytes:
        if isinstance(event, ir.TextDelta):
            return self._role() + self._chunk({"content": event.text})
        if isinstance(event, ir.ReasoningDelta):
            return self._role() + self._chunk({"reasoning_content": event.text})
        if isinstance(event, ir.ToolCallStart):
            self.call_index += 1
            call = {"index": self.call_index, "id": event.id, "type": "function", "function": {"name": event.name, "arguments": ""}}
            return self._role() + self._chunk({"tool_calls": [call]})
        if isinstance(event, ir.ToolCallDelta):
            return self._chunk({"tool_calls": [{"index": self.call_index, "function": {"arguments": event.arguments}}]})
        if isinstance(event, ir.Usage):
            self.usage = self.usage.merge(event)
            return b""
        if isinstance(event, ir.Finished):
            out = self._role() + self._chunk({}, FINISH_TO_OPENAI[event.finish.reason])
            if self.include_usage:
                out += sse_frame(
                    {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                     "choices": [], "usage": _usage_to_openai(self.usage)}
                )
            return out
        if isinstance(event, ir.ResponseStart):
            return self._role()
        return b""

    def end(self) -> bytes:
        return b"data: [DONE]\n\n"

    def error(self, err: ProxyError) -> bytes:
        return sse_frame(_error_body(err))


def _error_body(err: ProxyError) -> dict[str, Any]:
    return {"error": {"message": err.message, "type": ERROR_TYPES.get(err.kind, "server_error"), "param": err.param, "code": err.kind}}


class OpenAIAdapter(Adapter):
    name = "openai"
    # function names: a-z, A-Z, 0-9, underscores and dashes, at most 64 (OpenAI API reference)
    tool_names = ToolNameRule("A-Za-z0-9_-", 64)

    # ------------------------------------------------------------ inbound

    def decode_request(self, body: dict[str, Any], route: Route, headers: Mapping[str, str]) -> ir.Request:
        model = req(body, "model", str)
        system, messages = _decode_messages(req(body, "messages", list))
        reasoning = None
        effort = opt(body, "reasoning_effort", str)
        if effort:
            reasoning = ir.ReasoningConfig(enabled=effort != "none", effort=effort if effort != "none" else None)  # type: ignore[arg-type]
        max_tokens = integer(body, "max_completion_tokens")
        if max_tokens is None:
            max_tokens = integer(body, "max_tokens")
        extras = {k: v for k, v in body.items() if k not in _KNOWN}
        if "max_completion_tokens" in body:
            extras["max_completion_tokens"] = True
        return ir.Request(
            model=model,
            messages=messages,
            system=system,
            tools=_decode_tools(body["tools"]) if body.get("tools") is not None else [],
            tool_choice=_decode_tool_choice(body.get("tool_choice")),
            max_tokens=max_tokens,
            temperature=number(body, "temperature"),
            top_p=number(body, "top_p"),
            seed=integer(body, "seed"),
            stop=string_list(body, "stop"),
            stream=bool(opt(body, "stream", bool)),
            response_format=_decode_response_format(body.get("response_format")),
            reasoning=reasoning,
            parallel_tool_calls=opt(body, "parallel_tool_calls", bool),
            extras={"openai": extras},
        )

    def encode_response(self, resp: ir.Response, request: ir.Request) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": ir.text_of(resp.parts) or None, "refusal": None}
        reasoning = "".join(p.text for p in resp.parts if isinstance(p, ir.Reasoning))
        if reasoning:
            message["reasoning_content"] = reasoning
        calls = [p for p in resp.parts if isinstance(p, ir.ToolCall)]
        if calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": orjson.dumps(c.arguments).decode()}}
                for c in calls
            ]
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": FINISH_TO_OPENAI[resp.finish.reason]}],
            "usage": _usage_to_openai(resp.usage),
        }

    def stream_encoder(self, request: ir.Request, route: Route) -> StreamEncoder:
        return OpenAIStreamEncoder(request)

    def encode_error(self, err: ProxyError) -> tuple[int, dict[str, Any]]:
        return err.status, _error_body(err)

    def encode_model_list(self, models: list[ModelInfo], route: Route) -> dict[str, Any]:
        """One body both SDKs parse: OpenAI's ``object/data`` and Anthropic's ``data/has_more/first_id``."""
        data = [
            {"id": m.id, "object": "model", "created": 0, "owned_by": m.owned_by,
             "type": "model", "display_name": m.id, "created_at": "1970-01-01T00:00:00Z"}
            for m in models
        ]
        return {
            "object": "list",
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    # ------------------------------------------------------------ outbound

    def encode_request(self, request: ir.Request, target: UpstreamTarget) -> UpstreamCall:
        provider = target.provider
        body: dict[str, Any] = {"model": target.model, "messages": _encode_messages(request)}
        if request.tools and not (request.tool_choice and request.tool_choice.mode == "none" and not provider.tool_choice):
            body["tools"] = [
                {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
                for t in request.tools
            ]
            choice = request.tool_choice
            if choice and provider.tool_choice:
                body["tool_choice"] = {"type": "function", "function": {"name": choice.name}} if choice.mode == "tool" else choice.mode
            if request.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = request.parallel_tool_calls
        same = request.extras.get("openai", {})
        if request.max_tokens is not None:
            body["max_completion_tokens" if same.get("max_completion_tokens") else "max_tokens"] = request.max_tokens
        for key, value in (("temperature", request.temperature), ("top_p", request.top_p), ("seed", request.seed)):
            if value is not None:
                body[key] = value
        if request.stop:
            body["stop"] = request.stop
        if request.reasoning:
            if not request.reasoning.enabled:
                pass
            elif request.reasoning.effort:
                body["reasoning_effort"] = request.reasoning.effort
            else:
                body["reasoning_effort"] = ir.budget_to_effort(request.reasoning.budget_tokens)
        fmt = request.response_format
        if fmt and fmt.type == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": fmt.name or "response", "schema": fmt.schema or {}}}
        elif fmt and fmt.type == "json_object":
            body["response_format"] = {"type": "json_object"}
        for key, value in same.items():
            if key not in ("stream_options", "max_completion_tokens"):
                body.setdefault(key, value)
        if request.stream:
            body["stream"] = True
            if provider.stream_usage:
                body["stream_options"] = {"include_usage": True}
        headers = {"content-type": "application/json"}
        if target.api_key:
            headers["authorization"] = f"Bearer {target.api_key}"
        return UpstreamCall(f"{provider.base_url}/chat/completions", headers, body, request.stream)

    def decode_response(self, body: bytes) -> ir.Response:
        data = orjson.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
            if isinstance(data, dict) and data.get("error"):
                raise self.decode_error(502, body)
            raise UpstreamError(502, "bad_gateway", "upstream response has no choices")
        choice = data["choices"][0]
        message = choice.get("message") or {}
        parts: list[ir.Part] = []
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            parts.append(ir.Reasoning(reasoning))
        if isinstance(message.get("content"), str) and message["content"]:
            parts.append(ir.Text(message["content"]))
        for call in message.get("tool_calls") or ():
            fn = call.get("function") or {}
            args = fn.get("arguments")
            parts.append(ir.ToolCall(call.get("id") or ir.new_call_id(), fn.get("name", ""), args if isinstance(args, dict) else ir.parse_arguments(args or "")))
        saw_call = any(isinstance(p, ir.ToolCall) for p in parts)
        return ir.Response(data.get("id", ""), data.get("model", ""), parts, _finish(choice.get("finish_reason"), saw_call), _usage_from_openai(data.get("usage")))

    async def decode_stream(self, chunks: AsyncIterator[bytes]) -> ir.EventStream:
        decoder = OpenAIStreamDecoder()
        async for event in iter_sse(chunks):
            if event.data == "[DONE]":
                break
            try:
                chunk = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                yield ir.StreamError("bad_gateway", "upstream sent a stream chunk that is not JSON", 502)
                return
            if not isinstance(chunk, dict):
                continue
            if chunk.get("error"):
                err = self.decode_error(500, orjson.dumps(chunk))
                yield ir.StreamError(err.kind, err.message, err.status)
                return
            for e in decoder.feed(chunk):
                yield e
        else:
            if decoder.finish_raw is None:
                yield ir.StreamError("bad_gateway", "upstream stream ended before it finished", 502)
                return
        for e in decoder.close():
            yield e

    def decode_error(self, status: int, body: bytes) -> UpstreamError:
        message = body.decode("utf-8", "replace")[:500] or f"upstream answered HTTP {status}"
        kind = None
        try:
            data = orjson.loads(body)
            err = data.get("error") if isinstance(data, dict) else None
            if isinstance(err, dict):
                message = str(err.get("message") or message)
                code = err.get("code")
                if isinstance(code, int) and 400 <= code < 600 and status in (200, 500):
                    status = code
            elif isinstance(err, str):
                message = err
        except orjson.JSONDecodeError:
            pass
        return UpstreamError(status, kind, message)


ADAPTER = OpenAIAdapter()
