"""Whole Responses answers: the response object for clients, an upstream's
response object decoded, and errors in OpenAI's shape."""

from __future__ import annotations

from typing import Any

import orjson

from ... import ir
from ...errors import ProxyError, UpstreamError
from ..openai import ADAPTER as OPENAI
from . import wire
from .stream import ResponsesStreamEncoder


def encode_response(resp: ir.Response, req: ir.Request) -> dict[str, Any]:
    """The same encoder a stream uses, run over the whole response: one shape for both."""
    encoder = ResponsesStreamEncoder(req)
    for event in ir.response_events(resp):
        encoder.encode(event)
    body = encoder.response()
    body["output_text"] = "".join(
        c.get("text", "") for item in body["output"] if item["type"] == "message" for c in item["content"]
    )
    return body


def decode_response(body: bytes) -> ir.Response:
    data = orjson.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("output"), list):
        if isinstance(data, dict) and data.get("error"):
            raise decode_error(502, body)
        raise UpstreamError(502, "bad_gateway", "upstream response has no output")
    if data.get("status") == "failed":
        err = data.get("error") or {}
        raise UpstreamError(502, "api_error", str(err.get("message") or "the upstream response failed"))
    parts: list[ir.Part] = []
    for item in data["output"]:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "reasoning":
            texts = [s.get("text", "") for s in item.get("summary") or ()] + [c.get("text", "") for c in item.get("content") or ()]
            parts.append(ir.Reasoning("\n\n".join(t for t in texts if t), item.get("encrypted_content") or None,
                                      provider_metadata={wire.NAME: {"id": item.get("id")}}))
        elif kind == "message":
            for c in item.get("content") or ():
                text = c.get("text") if c.get("type") == "output_text" else c.get("refusal")
                if isinstance(text, str) and text:
                    parts.append(ir.Text(text))
        elif kind == "function_call":
            args = item.get("arguments")
            parts.append(ir.ToolCall(item.get("call_id") or ir.new_call_id(), item.get("name") or "",
                                     args if isinstance(args, dict) else ir.parse_arguments(args or "")))
    saw_call = any(isinstance(p, ir.ToolCall) for p in parts)
    finish = wire.finish_from(data.get("status"), data.get("incomplete_details"), saw_call)
    return ir.Response(data.get("id", ""), data.get("model", ""), parts, finish, wire.usage_from_responses(data.get("usage")))


def decode_error(status: int, body: bytes) -> UpstreamError:
    return OPENAI.decode_error(status, body)  # the same {"error": {message, type, param, code}} shape


def encode_error(err: ProxyError) -> tuple[int, dict[str, Any]]:
    return err.status, {"error": wire.error_object(err)}
