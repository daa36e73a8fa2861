"""Whole (non-streamed) Claude messages and errors, both directions."""

from __future__ import annotations

from typing import Any

import orjson

from ... import ir
from ...errors import BadGateway, ProxyError, UpstreamError, kind_for_status
from .. import carry
from ..base import ModelInfo
from .wire import (
    CLAUDE_THINKING,
    ERROR_TYPE_FROM_KIND,
    KIND_FROM_ERROR_TYPE,
    claude_signature,
    finish_from_claude,
    message_id,
    stop_reason_for,
    stop_sequence_for,
    usage_from_claude,
    usage_to_claude,
)

# ---------------------------------------------------------------- from a Claude upstream


def decode_response(body: bytes) -> ir.Response:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadGateway("the Anthropic upstream answered a body that is not JSON") from None
    if not isinstance(data, dict):
        raise BadGateway("the Anthropic upstream answered JSON that is not a message")
    if data.get("type") == "error":
        raise decode_error(500, body)
    if not isinstance(data.get("content"), list):
        raise BadGateway("the Anthropic upstream answered a message without a content list")
    parts = [p for block in data["content"] if isinstance(block, dict) for p in _part(block)]
    called = any(isinstance(p, ir.ToolCall) for p in parts)
    usage = data.get("usage")
    return ir.Response(
        id=str(data.get("id") or ""),
        model=str(data.get("model") or ""),
        parts=parts,
        finish=finish_from_claude(data.get("stop_reason"), called),
        usage=usage_from_claude(usage) if isinstance(usage, dict) else ir.Usage(),
    )


def _part(block: dict[str, Any]) -> list[ir.Part]:
    kind = block.get("type")
    if kind == "text":
        extra = {k: v for k, v in block.items() if k not in ("type", "text") and v is not None}
        return [ir.Text(str(block.get("text") or ""), {"claude": extra} if extra else None)]
    if kind == "thinking":
        return [ir.Reasoning(str(block.get("thinking") or ""), block.get("signature") or None, provider_metadata=_signed())]
    if kind == "redacted_thinking":
        return [ir.Reasoning(redacted=str(block.get("data") or ""), provider_metadata=_signed())]
    if kind == "tool_use":
        args = block.get("input")
        return [ir.ToolCall(str(block.get("id") or ir.new_call_id()), str(block.get("name") or ""), args if isinstance(args, dict) else {})]
    return []  # server tool blocks: Claude ran them itself; nothing for the client to act on


def _signed() -> dict[str, dict[str, Any]]:
    return {k: dict(v) for k, v in CLAUDE_THINKING.items()}


def decode_error(status: int, body: bytes) -> UpstreamError:
    """``{"type": "error", "error": {"type", "message"}}`` → UpstreamError; anything else keeps its text.

    Retry-After is a header, which this method does not see: the dispatcher sets it.
    """
    message = body.decode("utf-8", "replace")[:500] or f"upstream answered HTTP {status}"
    kind = None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or message)
        kind = KIND_FROM_ERROR_TYPE.get(str(err.get("type")))
    elif isinstance(err, str):
        message = err
    return UpstreamError(status, kind or kind_for_status(status), message)


def decode_count_tokens(body: bytes) -> int:
    data = orjson.loads(body)
    tokens = data.get("input_tokens") if isinstance(data, dict) else None
    if not isinstance(tokens, int):
        raise UpstreamError(502, "bad_gateway", "upstream count_tokens answer has no input_tokens")
    return tokens


# ---------------------------------------------------------------- to a Claude client


def encode_response(resp: ir.Response, req: ir.Request) -> dict[str, Any]:
    stop_reason = stop_reason_for(resp.finish)
    return {
        "id": message_id(resp.id),
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": [b for p in resp.parts if (b := _block(p)) is not None],
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence_for(stop_reason, req),
        "usage": usage_to_claude(resp.usage),
    }


def _block(part: ir.Part) -> dict[str, Any] | None:
    if isinstance(part, ir.Text):
        if not part.text:
            return None
        citations = ((part.provider_metadata or {}).get("claude") or {}).get("citations")
        return {"type": "text", "text": part.text, **({"citations": citations} if citations else {})}
    if isinstance(part, ir.Reasoning):
        if part.redacted is not None:
            return {"type": "redacted_thinking", "data": part.redacted}
        # Reasoning from other providers has no Claude signature: what they need back rides in a carried one.
        signature = claude_signature(part) or (carry.wrap(part) if carry.worth_carrying(part) else None)
        if not part.text and not signature:
            return None
        return {"type": "thinking", "thinking": part.text, "signature": signature or ""}
    if isinstance(part, ir.ToolCall):
        return {"type": "tool_use", "id": part.id, "name": part.name, "input": part.arguments}
    return None


def error_body(err: ProxyError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ERROR_TYPE_FROM_KIND.get(err.kind, "api_error"), "message": err.message}}


def encode_error(err: ProxyError) -> tuple[int, dict[str, Any]]:
    return err.status, error_body(err)


def encode_model_list(models: list[ModelInfo]) -> dict[str, Any]:
    data = [{"type": "model", "id": m.id, "display_name": m.id, "created_at": "1970-01-01T00:00:00Z"} for m in models]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
