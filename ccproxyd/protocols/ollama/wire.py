"""Ollama wire details both directions share: finish words, usage counts,
the tool-call shape, timestamps and the error body.

Ollama's Go server omits zero counts and durations (``omitempty``), so a
missing count on a final line means 0, not "unknown".
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson

from ... import ir
from ...errors import ProxyError, UpstreamError, kind_for_status

USAGE_KEYS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
DURATION_KEYS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")

_FINISH_BY_DONE_REASON: dict[str, ir.FinishReason] = {
    "stop": "stop",
    "length": "length",
    "load": "other",
    "unload": "other",
}

_STATUS_BY_KIND = {
    "invalid_request": 400,
    "authentication": 401,
    "permission": 403,
    "not_found": 404,
    "request_too_large": 413,
    "rate_limit": 429,
    "insufficient_quota": 429,
    "api_error": 500,
    "bad_gateway": 502,
    "unavailable": 503,
    "timeout": 504,
    "overloaded": 503,  # Ollama clients know no 529
}


def finish_from_done(done_reason: Any, called_tools: bool) -> ir.Finish:
    """Ollama says "stop" after tool calls too; the IR says tool_calls whenever a tool was called."""
    raw = done_reason if isinstance(done_reason, str) and done_reason else None
    if called_tools and raw in (None, "stop"):
        return ir.Finish("tool_calls", raw)
    if raw is None:
        return ir.Finish("stop")
    return ir.Finish(_FINISH_BY_DONE_REASON.get(raw, "other"), raw)


def done_reason_for(finish: ir.Finish) -> str:
    """The closed IR reason → the words Ollama clients know (stop | length | load | unload)."""
    if finish.reason == "length":
        return "length"
    if finish.reason == "other" and finish.raw in ("load", "unload"):
        return finish.raw
    return "stop"


def usage_from(obj: dict[str, Any]) -> ir.Usage:
    """Counts of a final (``done: true``) object; absent counts are zeros Go left out."""
    raw = {k: obj[k] for k in USAGE_KEYS if _is_int(obj.get(k))}
    return ir.Usage(
        input_tokens=raw.get("prompt_eval_count", 0),
        output_tokens=raw.get("eval_count", 0),
        raw=raw or None,
    )


def tool_call_to_wire(call: ir.ToolCall, index: int) -> dict[str, Any]:
    """One call as Ollama writes it: ``arguments`` an object, never a JSON string."""
    return {"id": call.id, "function": {"index": index, "name": call.name, "arguments": call.arguments}}


def tool_call_from_wire(raw: Any) -> ir.ToolCall | None:
    """An upstream tool call → IR, generating the id older Ollama leaves out; None if unusable."""
    if not isinstance(raw, dict) or not isinstance(raw.get("function"), dict):
        return None
    fn = raw["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        return None
    args = fn.get("arguments")
    if isinstance(args, str):
        args = ir.parse_arguments(args)
    elif not isinstance(args, dict):
        args = {}
    call_id = raw.get("id")
    return ir.ToolCall(call_id if isinstance(call_id, str) and call_id else ir.new_call_id(), name, args)


def shows_thinking(req: ir.Request) -> bool:
    """``think: false`` asks for no thinking output; absent, the model's default (thinking shown)."""
    return req.reasoning is None or req.reasoning.enabled


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_error(err: ProxyError) -> tuple[int, dict[str, Any]]:
    return _STATUS_BY_KIND.get(err.kind, err.status), {"error": err.message}


def decode_error(status: int, body: bytes) -> UpstreamError:
    """``{"error": "..."}`` (or an OpenAI-style nested error from a proxy in front) → UpstreamError."""
    return UpstreamError(status, kind_for_status(status), error_message(body) or f"upstream answered HTTP {status}")


def error_message(body: bytes) -> str:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace").strip()[:2000]
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, str):
            return err
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
    return body.decode("utf-8", "replace").strip()[:2000]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
