"""OpenAI Chat Completions, both as the client's protocol and as an upstream's."""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Iterator, Mapping

import orjson

from .. import ir
from ..config import Provider
from ..errors import ClientError, ProxyError, UpstreamError
from ..ir_embed import EmbedRequest, EmbedResponse
from ..paths import Route
from ..streams import SSEDecoder, SSEEvent, close_chunks, sse_frame
from . import carry, files, openai_completions, openai_embed
from .base import Adapter, ModelInfo, Relay, StreamEncoder, UpstreamCall, UpstreamTarget, bearer_headers
from ..toolnames import ToolNameRule
from .fields import INT64_MAX, INT64_MIN, check, image_from_url, integer, number, opt, req, string_list

FINISH_FROM_OPENAI: dict[str, ir.FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}
REASONING_FIELDS = ("reasoning_content", "reasoning")  # where OpenAI-compatible servers put thinking
CARRY_FORMAT = "ccproxyd-v1"  # the reasoning_details format of the reasoning ccproxyd carries for other upstreams
FINISH_TO_OPENAI = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter", "error": "stop", "other": "stop"}
ERROR_TYPES = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "request_too_large": "invalid_request_error",
    "rate_limit": "rate_limit_error",
    "insufficient_quota": "insufficient_quota",
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
            parts.append(image_from_url(url))
        elif kind == "file":
            parts.append(_decode_file(req(item, "file", dict, at + "."), at + ".file"))
        else:
            raise ClientError(f"{at}.type {kind!r} is not supported (text, image_url, file)", param=f"{at}.type")
    return parts


def _decode_file(file: dict[str, Any], at: str) -> ir.Part:
    return files.decode_data_url(opt(file, "file_data", str, at + "."), opt(file, "filename", str, at + "."), at, "file_id")


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
            parts = _carried(msg.get("reasoning_details"))
            for field in REASONING_FIELDS if not parts else ():
                reasoning = opt(msg, field, str, at + ".")
                if reasoning:
                    parts.append(_reasoning(reasoning, field))
                    break
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


def _reasoning(text: str, field: str) -> ir.Reasoning:
    """Reasoning an OpenAI-compatible server (DeepSeek, Kimi, Qwen...) put in ``field``, marked as such."""
    return ir.Reasoning(text, provider_metadata={"openai": {"field": field}})


def _carried(details: Any) -> list[ir.Part]:
    """Other upstreams' reasoning this client carried back in ``reasoning_details`` (see :func:`_details`)."""
    if not isinstance(details, list):
        return []
    found = [carry.unwrap(d.get("data") or "") for d in details if isinstance(d, dict) and d.get("type") == "reasoning.encrypted"]
    return [p for p in found if p is not None]


def _details(parts: list[ir.Part]) -> list[dict[str, Any]]:
    """Reasoning another upstream needs back, as OpenRouter-style ``reasoning_details`` entries
    (``reasoning.encrypted``): clients that keep the assistant message send them back as they came."""
    return [{"type": "reasoning.encrypted", "data": carry.wrap(p), "format": CARRY_FORMAT, "index": i}
            for i, p in enumerate(parts) if isinstance(p, ir.Reasoning) and carry.worth_carrying(p, "openai")]


def _reasoning_back(parts: list[ir.Part]) -> dict[str, str]:
    """An assistant turn's reasoning in the field it came in: such servers need it back on tool-call turns
    in thinking mode. Only reasoning from an OpenAI-compatible server goes back; other providers' stays."""
    out: dict[str, str] = {}
    for p in parts:
        meta = (p.provider_metadata or {}).get("openai") if isinstance(p, ir.Reasoning) else None
        if meta and p.text:
            field = meta.get("field") if meta.get("field") in REASONING_FIELDS else "reasoning_content"
            out[field] = out.get(field, "") + p.text
    return out


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
        elif isinstance(p, ir.File):
            if p.media_type != files.PDF:  # "Chat Completions accepts only PDF files as file content parts"
                raise files.refuse(p, "OpenAI Chat Completions", "PDF files only")
            out.append({"type": "file", "file": {"filename": files.filename(p), "file_data": files.data_url(p)}})
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
            entry.update(_reasoning_back(msg.parts))
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
                    rest.extend(i for i in p.content if isinstance(i, (ir.Image, ir.File)))
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


def _answer(model: str, message: dict[str, Any], reason: ir.FinishReason, usage: ir.Usage) -> dict[str, Any]:
    """A chat.completion object: a new id, this second, one choice."""
    return {
        "id": "chatcmpl-" + ir.random_hex(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": FINISH_TO_OPENAI[reason]}],
        "usage": _usage_to_openai(usage),
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
        self.ended: str | None = None  # "done" at [DONE], "error" after an error event: nothing more is read

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
            text = choice.get("text")
            if isinstance(text, str) and text:  # a /completions chunk
                out.extend(self.blocks.text(text))
            for field in REASONING_FIELDS:
                reasoning = delta.get(field)
                if isinstance(reasoning, str) and reasoning:
                    out.extend(self.blocks.reasoning(reasoning, {"openai": {"field": field}}))
                    break
            content = delta.get("content")
            if isinstance(content, str) and content:
                out.extend(self.blocks.text(content))
            for call in delta.get("tool_calls") or ():
                out.extend(self._call_fragment(call))
            finish = choice.get("finish_reason")
            if finish:
                self.finish_raw = finish
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
    object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def __init__(self, req: ir.Request) -> None:
        self.id = self.id_prefix + ir.random_hex()
        self.created = int(time.time())
        self.model = req.model
        options = req.extras.get("openai", {}).get("stream_options")
        self.include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        self.call_index = -1
        self.usage = ir.Usage()
        self.started = False
        self.reasoning: ir.Reasoning | None = None  # the open reasoning block, for reasoning_details
        self.carried = 0

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse_frame(
            {
                "id": self.id,
                "object": self.object_name,
                "created": self.created,
                "model": self.model,
                "choices": [self._choice(delta, finish)],
            }
        )

    def _choice(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def _role(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        return self._chunk({"role": "assistant", "content": ""})

    def encode(self, event: ir.Event) -> bytes:
        if isinstance(event, ir.TextDelta):
            chunk = self._chunk({"content": event.text})
            return chunk if self.started else self._role() + chunk
        if isinstance(event, ir.ReasoningDelta):
            if self.reasoning is not None:
                self.reasoning.text += event.text
            return self._role() + self._chunk({"reasoning_content": event.text})
        if isinstance(event, ir.ReasoningStart):
            self.reasoning = ir.Reasoning("", provider_metadata=event.provider_metadata)
            return self._role()
        if isinstance(event, ir.ReasoningSignature) and self.reasoning is not None:
            self.reasoning.signature = (self.reasoning.signature or "") + event.signature
            return b""
        if isinstance(event, ir.ReasoningEnd) and self.reasoning is not None:
            part, self.reasoning = self.reasoning, None
            details = _details([part])
            if not details:
                return b""
            details[0]["index"] = self.carried
            self.carried += 1
            return self._role() + self._chunk({"reasoning_details": details})
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
                    {"id": self.id, "object": self.object_name, "created": self.created, "model": self.model,
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


class CompletionStreamEncoder(OpenAIStreamEncoder):
    """``/v1/completions`` chunks: ``text`` in each choice, no role chunk, no reasoning or tool calls."""

    object_name = "text_completion"
    id_prefix = "cmpl-"

    def _choice(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {"text": delta.get("content", ""), "index": 0, "logprobs": None, "finish_reason": finish}

    def _role(self) -> bytes:
        return b""

    def encode(self, event: ir.Event) -> bytes:
        if isinstance(event, (ir.ReasoningDelta, ir.ToolCallStart, ir.ToolCallDelta)):
            return b""
        return super().encode(event)


def _kind_by_name(model: str) -> str:
    """OpenAI's list says nothing of what a model does; its embedding models say it in their names."""
    return "embedding" if "embed" in model else "chat"


def _error_body(err: ProxyError) -> dict[str, Any]:
    return {"error": {"message": err.message, "type": ERROR_TYPES.get(err.kind, "server_error"), "param": err.param, "code": err.kind}}


class OpenAIAdapter(Adapter):
    name = "openai"
    can_embed = True
    embed_batch_limit = openai_embed.BATCH_LIMIT
    embeds_token_arrays = True
    # function names: a-z, A-Z, 0-9, underscores and dashes, at most 64 (OpenAI API reference)
    tool_names = ToolNameRule("A-Za-z0-9_-", 64)

    # ------------------------------------------------------------ inbound

    def decode_request(self, body: dict[str, Any], route: Route, headers: Mapping[str, str]) -> ir.Request:
        if route.action == "complete":
            return openai_completions.decode_request(body)
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
            wants_thinking=reasoning is not None and reasoning.enabled,
            builtin_tools=["web_search"] if body.get("web_search_options") is not None else [],
            extras={"openai": extras},
        )

    def encode_response(self, resp: ir.Response, request: ir.Request) -> dict[str, Any]:
        if request.completion is not None:
            return openai_completions.encode_response(resp, request, FINISH_TO_OPENAI[resp.finish.reason], _usage_to_openai(resp.usage))
        message: dict[str, Any] = {"role": "assistant", "content": ir.text_of(resp.parts) or None, "refusal": None}
        thoughts = [p for p in resp.parts if isinstance(p, ir.Reasoning)]
        if thoughts:  # one pass over the parts for the answers without reasoning
            reasoning = "".join(p.text for p in thoughts)
            if reasoning:
                message["reasoning_content"] = reasoning
            details = _details(resp.parts)
            if details:
                message["reasoning_details"] = details
        calls = [p for p in resp.parts if isinstance(p, ir.ToolCall)]
        if calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": orjson.dumps(c.arguments).decode()}}
                for c in calls
            ]
        return _answer(request.model, message, resp.finish.reason, resp.usage)

    def relay(self, body: dict[str, Any], route: Route, headers: Mapping[str, str]) -> Relay | None:
        if route.action != "chat":
            return None
        fields = _plain_fields(body)
        return PlainChat(self, body, route, headers, fields) if fields is not None else None

    def stream_encoder(self, request: ir.Request, route: Route) -> StreamEncoder:
        return CompletionStreamEncoder(request) if request.completion is not None else OpenAIStreamEncoder(request)

    def encode_error(self, err: ProxyError) -> tuple[int, dict[str, Any]]:
        return (503 if err.status == 529 else err.status), _error_body(err)  # OpenAI clients know no 529

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
        if request.completion is not None and request.completion.origin == "openai":  # /v1/completions goes as it came
            return openai_completions.encode_request(request, target, provider.stream_usage)
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
        return UpstreamCall(f"{provider.base_url}/chat/completions", bearer_headers(target.api_key), body, request.stream)

    def streams_usage(self, provider: Provider) -> bool:
        return provider.stream_usage  # only then is the upstream asked for it

    def decode_response(self, body: bytes) -> ir.Response:
        data = orjson.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
            if isinstance(data, dict) and data.get("error"):
                raise self.decode_error(502, body)
            raise UpstreamError(502, "bad_gateway", "upstream response has no choices")
        choice = data["choices"][0]
        message = choice.get("message") or {}
        parts: list[ir.Part] = []
        for field in REASONING_FIELDS:
            reasoning = message.get(field)
            if isinstance(reasoning, str) and reasoning:
                parts.append(_reasoning(reasoning, field))
                break
        content = message.get("content")
        if isinstance(content, str) and content:
            parts.append(ir.Text(content))
        text = choice.get("text")
        if isinstance(text, str) and text:  # a /completions answer
            parts.append(ir.Text(text))
        saw_call = False
        for call in message.get("tool_calls") or ():
            fn = call.get("function") or {}
            args = fn.get("arguments")
            parts.append(ir.ToolCall(call.get("id") or ir.new_call_id(), fn.get("name", ""), args if isinstance(args, dict) else ir.parse_arguments(args or "")))
            saw_call = True
        return ir.Response(data.get("id", ""), data.get("model", ""), parts, _finish(choice.get("finish_reason"), saw_call), _usage_from_openai(data.get("usage")))

    async def decode_stream(self, chunks: AsyncIterator[bytes]) -> ir.EventStream:
        """SSE is split in this loop, not by an ``iter_sse`` generator in between: one async generator
        layer less per chunk. Left at [DONE], the chunks are closed at once, not by a task once collected."""
        decoder, sse = OpenAIStreamDecoder(), SSEDecoder()
        try:
            async for data in chunks:
                for event in self._stream_events(decoder, sse.feed(data)):
                    yield event
                if decoder.ended is not None:
                    break
                sse.check()
            else:
                for event in self._stream_events(decoder, sse.close()):
                    yield event
        finally:
            await close_chunks(chunks)
        if decoder.ended == "error":
            return
        if decoder.ended is None and decoder.finish_raw is None:
            yield ir.StreamError("bad_gateway", "upstream stream ended before it finished", 502)
            return
        for event in decoder.close():
            yield event

    def _stream_events(self, decoder: OpenAIStreamDecoder, events: list[SSEEvent]) -> Iterator[ir.Event]:
        """The IR events of these SSE events, up to [DONE] or an error event (``decoder.ended`` says which)."""
        for event in events:
            if event.data == "[DONE]":
                decoder.ended = "done"
                return
            try:
                chunk = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                decoder.ended = "error"
                yield ir.StreamError("bad_gateway", "upstream sent a stream chunk that is not JSON", 502)
                return
            if not isinstance(chunk, dict):
                continue
            if chunk.get("error"):
                err = self.decode_error(500, orjson.dumps(chunk))
                decoder.ended = "error"
                yield ir.StreamError(err.kind, err.message, err.status)
                return
            yield from decoder.feed(chunk)

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

    # ------------------------------------------------------------ model discovery

    def encode_list_models_request(self, target: UpstreamTarget) -> UpstreamCall | None:
        return UpstreamCall(f"{target.provider.base_url}/models", bearer_headers(target.api_key), {}, False, "GET")

    def decode_list_models(self, body: bytes) -> list[ModelInfo]:
        data = orjson.loads(body).get("data")
        return [ModelInfo(m["id"], kind=_kind_by_name(m["id"])) for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]

    # ------------------------------------------------------------ embeddings

    def decode_embed_request(self, body: dict[str, Any], route: Route) -> EmbedRequest:
        return openai_embed.decode_request(body)

    def encode_embed_response(self, resp: EmbedResponse, req: EmbedRequest, route: Route) -> dict[str, Any]:
        return openai_embed.encode_response(resp, req)

    def encode_embed_request(self, req: EmbedRequest, target: UpstreamTarget) -> UpstreamCall:
        return openai_embed.encode_request(req, target)

    def decode_embed_response(self, body: bytes) -> EmbedResponse:
        return openai_embed.decode_response(body)


ADAPTER = OpenAIAdapter()


# ---------------------------------------------------------------- the same-protocol relay

# Known fields a plain request leaves out (or null): each would need the unified model.
_NOT_PLAIN = ("tools", "tool_choice", "response_format", "reasoning_effort", "parallel_tool_calls", "functions", "function_call")
_PLAIN_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_PLAIN_MESSAGE_KEYS = frozenset({"role", "content", "name"})  # ``name`` is dropped on both paths (kept for tool messages only)


def _plain_int(value: Any) -> bool:
    return type(value) is int and INT64_MIN <= value <= INT64_MAX


def _plain_messages(raw: Any) -> list[dict[str, Any]] | None:
    """Text messages as ``_encode_messages`` sends them once decoded: the system and developer messages before
    any other joined into one system prompt (left out when empty), an empty user message left out, an empty
    assistant one sent with null content. None when a message is anything else."""
    if type(raw) is not list:
        return None
    prompt: list[str] = []
    out: list[dict[str, Any]] = []
    started = False
    for msg in raw:
        if type(msg) is not dict or not msg.keys() <= _PLAIN_MESSAGE_KEYS:
            return None
        role, content = msg.get("role"), msg.get("content")
        if type(role) is not str or type(content) is not str or role not in _PLAIN_ROLES:
            return None
        role = _PLAIN_ROLES[role]
        if role == "system":
            if started:
                out.append({"role": "system", "content": content})
            elif content:
                prompt.append(content)
            continue
        started = True
        if role == "assistant":
            out.append({"role": "assistant", "content": content or None})
        elif content:
            out.append({"role": "user", "content": content})
    if prompt:
        out.insert(0, {"role": "system", "content": "".join(prompt)})
    return out


def _plain_fields(body: dict[str, Any]) -> dict[str, Any] | None:
    """What ``encode_request`` sends after ``model`` for this body, in its order; None when the body is not
    plain: it streams, has a field of ``_NOT_PLAIN``, a message :func:`_plain_messages` does not take, or a value
    of a type the general path would convert or refuse."""
    stream = body.get("stream")
    if type(body.get("model")) is not str or (stream is not None and stream is not False):
        return None
    for key in _NOT_PLAIN:
        if body.get(key) is not None:
            return None
    messages = _plain_messages(body.get("messages"))
    if messages is None:
        return None
    fields: dict[str, Any] = {"messages": messages}
    given = body.get("max_completion_tokens")
    limit = given if given is not None else body.get("max_tokens")
    if limit is not None:
        if not _plain_int(limit):
            return None
        fields["max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"] = limit
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None:
            if type(value) is not float and not _plain_int(value):
                return None
            fields[key] = float(value)
    seed = body.get("seed")
    if seed is not None:
        if not _plain_int(seed):
            return None
        fields["seed"] = seed
    stop = body.get("stop")
    if type(stop) is str:
        fields["stop"] = [stop]
    elif type(stop) is list and all(type(s) is str for s in stop):
        if stop:
            fields["stop"] = list(stop)
    elif stop is not None:
        return None
    for key, value in body.items():
        if key not in _KNOWN and key != "stream_options":  # the rest goes as it came
            fields[key] = value
    return fields


class PlainChat(Relay):
    """A plain Chat Completions request to an OpenAI upstream (see :class:`Relay`). Its answer is re-encoded
    straight from the upstream's JSON: same new id, time and fields as ``encode_response``, choices but the
    first left out, as there."""

    __slots__ = ("adapter", "body", "route", "headers", "model", "fields", "_request")

    def __init__(self, adapter: OpenAIAdapter, body: dict[str, Any], route: Route, headers: Mapping[str, str], fields: dict[str, Any]) -> None:
        self.adapter, self.body, self.route, self.headers = adapter, body, route, headers
        self.model: str = body["model"]
        self.fields = fields
        self._request: ir.Request | None = None

    def request(self) -> ir.Request:
        if self._request is None:
            self._request = self.adapter.decode_request(self.body, self.route, self.headers)
        return self._request

    def call(self, target: UpstreamTarget) -> UpstreamCall:
        body = {"model": target.model, **self.fields}
        return UpstreamCall(f"{target.provider.base_url}/chat/completions", bearer_headers(target.api_key), body, False)

    def answer(self, body: bytes) -> tuple[dict[str, Any], ir.Usage] | None:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        choices = data.get("choices") if type(data) is dict else None
        if type(choices) is not list or not choices or type(choices[0]) is not dict:
            return None
        choice = choices[0]
        message, finish, usage = choice.get("message") or {}, choice.get("finish_reason"), data.get("usage")
        if type(message) is not dict or message.get("tool_calls") or (finish is not None and type(finish) is not str):
            return None
        if any(type(message.get(f)) is str and message.get(f) for f in REASONING_FIELDS):
            return None
        text = choice.get("text")
        if type(text) is str and text:  # a completion's text: rare here, left to the general path
            return None
        if type(usage) is not dict or type(usage.get("prompt_tokens")) is not int or type(usage.get("completion_tokens")) is not int:
            return None
        if any(type(usage.get(k) or {}) is not dict for k in ("prompt_tokens_details", "completion_tokens_details")):
            return None
        content = message.get("content")
        counted = _usage_from_openai(usage)
        reply = {"role": "assistant", "content": content if type(content) is str and content else None, "refusal": None}
        return _answer(self.model, reply, _finish(finish, False).reason, counted), counted
