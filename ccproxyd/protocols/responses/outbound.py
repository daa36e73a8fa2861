"""The unified model → a request for a Responses upstream.

Always ``store: false`` with ``include: ["reasoning.encrypted_content"]``: the
upstream keeps nothing and its reasoning comes back as an opaque blob that the
next turn replays. Only reasoning a Responses upstream made (marked in
``provider_metadata["responses"]``) is replayed; other reasoning stays behind.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from ... import ir
from .. import files
from ..base import UpstreamCall, UpstreamTarget
from . import wire

# Same-protocol client fields sent on as they came; the rest is ours or rebuilt from the IR.
_NOT_FORWARDED = wire.PRIVATE | {"store", "include", "stream_options", "previous_response_id", "conversation", "background"}


def encode_request(req: ir.Request, target: UpstreamTarget) -> UpstreamCall:
    provider = target.provider
    body: dict[str, Any] = {"model": target.model, "input": _items(req), "store": False, "include": [wire.ENCRYPTED_INCLUDE]}
    if req.system:
        body["instructions"] = ir.text_of(req.system)
    same = wire.state(req)
    strict = set(same.get(wire.STRICT) or ())
    tools: list[dict[str, Any]] = [
        {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters, "strict": t.name in strict} for t in req.tools
    ]
    tools += same.get(wire.HOSTED) or []
    if tools:
        body["tools"] = tools
        if req.tool_choice and provider.tool_choice:
            body["tool_choice"] = _tool_choice(req.tool_choice, same.get(wire.HOSTED) or [])
        if req.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.max_tokens is not None:
        body["max_output_tokens"] = req.max_tokens
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.reasoning is not None:
        if not req.reasoning.enabled:
            body["reasoning"] = {"effort": "none"}
        else:
            effort = req.reasoning.effort or ir.budget_to_effort(req.reasoning.budget_tokens)
            body["reasoning"] = {"effort": effort, "summary": "auto"} if req.reasoning.include_thoughts else {"effort": effort}
    fmt = req.response_format
    if fmt and fmt.type == "json_schema":
        body["text"] = {"format": {"type": "json_schema", "name": fmt.name or "response", "schema": fmt.schema or {}}}
    elif fmt and fmt.type == "json_object":
        body["text"] = {"format": {"type": "json_object"}}
    for key, value in same.items():
        if key not in _NOT_FORWARDED:
            body.setdefault(key, value)
    if req.stream:
        body["stream"] = True
    headers = {"content-type": "application/json"}
    if target.api_key:
        headers["authorization"] = f"Bearer {target.api_key}"
    return UpstreamCall(f"{provider.base_url}/responses", headers, body, req.stream)


def encode_count_tokens_request(req: ir.Request, target: UpstreamTarget) -> UpstreamCall:
    """``POST /responses/input_tokens`` takes the request's input, instructions and tools."""
    call = encode_request(dataclasses.replace(req, stream=False), target)
    body = {k: v for k, v in call.body.items() if k in ("model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "reasoning", "text")}
    return UpstreamCall(call.url + "/input_tokens", call.headers, body, False)


def _tool_choice(choice: ir.ToolChoice, hosted: list[dict[str, Any]]) -> Any:
    if choice.mode != "tool":
        return choice.mode
    if any(t.get("type") == choice.name for t in hosted):
        return {"type": choice.name}
    return {"type": "function", "name": choice.name}


def _items(req: ir.Request) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for msg in req.messages:
        if msg.role == "system":
            items.append({"type": "message", "role": "developer", "content": [{"type": "input_text", "text": ir.text_of(msg.parts)}]})
        elif msg.role == "assistant":
            items.extend(_assistant(msg.parts))
        else:
            rest: list[ir.Part] = []
            for p in msg.parts:
                if isinstance(p, ir.ToolResult):
                    text = ir.text_of(p.content)
                    items.append({"type": "function_call_output", "call_id": p.call_id,
                                  "output": f"Error: {text}" if p.is_error and not text.startswith("Error") else text})
                    rest.extend(i for i in p.content if isinstance(i, (ir.Image, ir.File)))
                else:
                    rest.append(p)
            if rest:
                items.append({"type": "message", "role": "user", "content": [_input_part(p) for p in rest if isinstance(p, (ir.Text, ir.Image, ir.File))]})
    return items


def _input_part(part: ir.Text | ir.Image | ir.File) -> dict[str, Any]:
    if isinstance(part, ir.Text):
        return {"type": "input_text", "text": part.text}
    if isinstance(part, ir.File):
        return {"type": "input_file", "filename": files.filename(part), "file_data": files.data_url(part)}
    url = f"data:{part.media_type or 'image/png'};base64,{part.data}" if part.data is not None else part.url or ""
    return {"type": "input_image", "image_url": url, "detail": "auto"}


def _assistant(parts: list[ir.Part]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    texts: list[str] = []

    def flush() -> None:
        if texts:
            items.append({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "".join(texts), "annotations": []}]})
            texts.clear()

    for p in parts:
        if isinstance(p, ir.Text):
            texts.append(p.text)
        elif isinstance(p, ir.ToolCall):
            flush()
            items.append({"type": "function_call", "call_id": p.id, "name": p.name, "arguments": orjson.dumps(p.arguments).decode()})
        elif isinstance(p, ir.Reasoning):
            own = (p.provider_metadata or {}).get(wire.NAME)
            if own is not None and p.signature:
                flush()
                summary = [{"type": "summary_text", "text": p.text}] if p.text else []
                items.append({"type": "reasoning", "id": own.get("id") or wire.new_id("rs"), "summary": summary, "encrypted_content": p.signature})
    flush()
    return items
