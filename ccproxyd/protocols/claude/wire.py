"""Claude wire vocabulary shared by the request, response and stream modules:
stop reasons, error types, usage arithmetic, and how a thinking signature is
known to be Claude's own.
"""

from __future__ import annotations

import re
from typing import Any

from ... import ir

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 8192
MIN_THINKING_BUDGET = 1024
MAX_CACHE_BREAKPOINTS = 4
# Keys of extras["claude"] that are ours, not body fields.
BETA_KEY = "anthropic-beta"
TOOL_FIELDS_KEY = "_tool_fields"  # {tool name: fields beyond name/description/input_schema (cache_control, strict...)}
SERVER_TOOLS_KEY = "_server_tools"  # tools with a `type` Claude runs itself (web_search...), kept whole
INTERNAL_KEYS = frozenset({BETA_KEY, TOOL_FIELDS_KEY, SERVER_TOOLS_KEY})

STOP_REASONS = frozenset({"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal", "model_context_window_exceeded"})
FINISH_FROM_CLAUDE: dict[str, ir.FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "other",
}
# "error" and "other" have no Claude word; end_turn is the only neutral one clients accept.
FINISH_TO_CLAUDE = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "error": "end_turn",
    "other": "end_turn",
}

KIND_FROM_ERROR_TYPE = {
    "invalid_request_error": "invalid_request",
    "authentication_error": "authentication",
    "permission_error": "permission",
    "billing_error": "permission",
    "not_found_error": "not_found",
    "request_too_large": "request_too_large",
    "rate_limit_error": "rate_limit",
    "api_error": "api_error",
    "timeout_error": "timeout",
    "overloaded_error": "overloaded",
}
ERROR_TYPE_FROM_KIND = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "request_too_large": "request_too_large",
    "rate_limit": "rate_limit_error",
    "insufficient_quota": "rate_limit_error",
    "api_error": "api_error",
    "bad_gateway": "api_error",
    "unavailable": "api_error",
    "timeout": "timeout_error",
    "overloaded": "overloaded_error",
}
STATUS_FROM_ERROR_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def finish_from_claude(stop_reason: str | None, called_tool: bool) -> ir.Finish:
    if stop_reason is None:
        return ir.Finish("tool_calls" if called_tool else "stop", None)
    reason = FINISH_FROM_CLAUDE.get(stop_reason, "other")
    if called_tool and reason == "stop":
        reason = "tool_calls"
    return ir.Finish(reason, stop_reason)


def stop_reason_for(finish: ir.Finish) -> str:
    """The client's stop_reason: the upstream's own word when it was Claude's and still means the same."""
    if finish.raw in STOP_REASONS and FINISH_FROM_CLAUDE[finish.raw] == finish.reason:
        return finish.raw
    return FINISH_TO_CLAUDE[finish.reason]


def stop_sequence_for(stop_reason: str, req: ir.Request) -> str | None:
    """The IR does not keep which sequence matched; with exactly one it can only be that one."""
    if stop_reason == "stop_sequence" and len(req.stop) == 1:
        return req.stop[0]
    return None


# ---------------------------------------------------------------- usage

# Claude's input_tokens exclude cache reads and cache writes; the IR's input_tokens
# is the whole prompt (OpenAI's prompt_tokens semantic).


def usage_from_claude(raw: dict[str, Any]) -> ir.Usage:
    uncached = _int(raw.get("input_tokens"))
    read = _int(raw.get("cache_read_input_tokens"))
    created = _int(raw.get("cache_creation_input_tokens"))
    total = None if uncached is None else uncached + (read or 0) + (created or 0)
    details = raw.get("output_tokens_details")
    thinking = _int(details.get("thinking_tokens")) if isinstance(details, dict) else None
    return ir.Usage(
        input_tokens=total,
        output_tokens=_int(raw.get("output_tokens")),
        cached_input_tokens=read,
        cache_creation_input_tokens=created,
        reasoning_tokens=thinking,
        raw=dict(raw),
    )


def usage_to_claude(usage: ir.Usage, estimate: int | None = None) -> dict[str, Any]:
    """Claude usage fields; ``estimate`` stands in for an unknown prompt size."""
    read = usage.cached_input_tokens or 0
    created = usage.cache_creation_input_tokens or 0
    total = usage.input_tokens if usage.input_tokens is not None else estimate
    out: dict[str, Any] = {
        "input_tokens": max(0, (total or 0) - read - created),
        "output_tokens": usage.output_tokens or 0,
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": read,
    }
    return out


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# ---------------------------------------------------------------- signatures, ids

# provider_metadata a Claude decoder puts on thinking it got from Claude: its
# signature (Reasoning.signature, or signature_delta in a stream) is Claude's.
CLAUDE_THINKING: dict[str, dict[str, Any]] = {"claude": {"signed": True}}


def claude_meta(meta: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    return (meta or {}).get("claude") or {}


def claude_signature(part: ir.Reasoning) -> str | None:
    """The signature Claude gave this thinking, or None when it has none of Claude's."""
    meta = (part.provider_metadata or {}).get("claude")
    if meta is None:
        return None
    return meta.get("signature") or part.signature or None


_ID_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")


def safe_tool_id(call_id: str) -> str:
    """Claude wants tool_use ids matching ^[a-zA-Z0-9_-]+$; other providers' ids may not.

    The same mapping is applied to calls and results, so pairs still match.
    """
    return _ID_UNSAFE.sub("_", call_id) if call_id else "toolu_" + ir.random_hex(24)


def message_id(upstream_id: str | None) -> str:
    if upstream_id and upstream_id.startswith("msg_"):
        return upstream_id
    return "msg_" + (_ID_UNSAFE.sub("_", upstream_id) if upstream_id else ir.random_hex(24))
