"""Whole (``stream: false``) chat responses, both directions."""

from __future__ import annotations

from typing import Any

import orjson

from ... import ir
from ...errors import BadGateway, UpstreamError
from .wire import DURATION_KEYS, done_reason_for, finish_from_done, now_rfc3339, shows_thinking, tool_call_from_wire, tool_call_to_wire, usage_from


def decode_response(body: bytes) -> ir.Response:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadGateway(f"the Ollama upstream sent invalid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise BadGateway("the Ollama upstream sent JSON that is not an object")
    if "error" in obj and "message" not in obj:
        raise UpstreamError(502, "bad_gateway", str(obj["error"]))
    parts = message_parts(message_of(obj))
    called = any(isinstance(p, ir.ToolCall) for p in parts)
    model = obj.get("model")
    return ir.Response(
        id="",  # Ollama responses carry no id; inbound encoders make their own
        model=model if isinstance(model, str) else "",
        parts=parts,
        finish=finish_from_done(obj.get("done_reason"), called),
        usage=usage_from(obj),
    )


def message_of(obj: dict[str, Any]) -> Any:
    """A chat line's ``message``; an ``/api/generate`` line's ``response`` and ``thinking`` read as one."""
    if "message" not in obj and isinstance(obj.get("response"), str):
        return {"content": obj["response"], "thinking": obj.get("thinking")}
    return obj.get("message")


def message_parts(message: Any) -> list[ir.Part]:
    """An upstream ``message`` → parts in the order a model produces them: thinking, text, calls."""
    if not isinstance(message, dict):
        return []
    parts: list[ir.Part] = []
    thinking = message.get("thinking")
    if isinstance(thinking, str) and thinking:
        parts.append(ir.Reasoning(thinking))
    content = message.get("content")
    if isinstance(content, str) and content:
        parts.append(ir.Text(content))
    for raw in message.get("tool_calls") or ():
        call = tool_call_from_wire(raw)
        if call is not None:
            parts.append(call)
    return parts


def encode_response(resp: ir.Response, req: ir.Request) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(p.text for p in resp.parts if isinstance(p, ir.Text)),
    }
    thinking = "".join(p.text for p in resp.parts if isinstance(p, ir.Reasoning))
    if thinking and shows_thinking(req):
        message["thinking"] = thinking
    calls = [p for p in resp.parts if isinstance(p, ir.ToolCall)]
    if calls:
        message["tool_calls"] = [tool_call_to_wire(c, i) for i, c in enumerate(calls)]
    out: dict[str, Any] = {
        "model": req.model,
        "created_at": now_rfc3339(),
        "message": message,
        "done": True,
        "done_reason": done_reason_for(resp.finish),
    }
    out.update(counts(resp.usage))
    # Timings are known only from an Ollama upstream; Ollama itself omits what it did not measure.
    raw = resp.usage.raw or {}
    out.update({k: raw[k] for k in DURATION_KEYS if isinstance(raw.get(k), int)})
    return out


def counts(usage: ir.Usage) -> dict[str, int]:
    return {"prompt_eval_count": usage.input_tokens or 0, "eval_count": usage.output_tokens or 0}
