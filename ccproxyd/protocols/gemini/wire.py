"""Gemini wire vocabulary shared by the request, response and stream modules:
field access that accepts both JSON spellings, finish reasons, error statuses,
usage arithmetic, and where a thought signature travels in the IR.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from ... import ir
from .. import fields
from ..fields import check

# The documented stand-in for a thought signature we never received (the call
# came from another protocol's upstream, or the client dropped it).
SKIP_SIGNATURE = "skip_thought_signature_validator"

# Keys of extras["gemini"] that are ours, not body fields.
JSON_SCHEMA_TOOLS_KEY = "_parametersJsonSchema"  # names of tools the client gave as full JSON Schema
RESPONSE_JSON_SCHEMA_KEY = "_responseJsonSchema"  # the client used responseJsonSchema, not responseSchema
THINKING_LEVEL_KEY = "_thinkingLevel"  # the client used thinkingLevel, not thinkingBudget
INTERNAL_KEYS = frozenset({JSON_SCHEMA_TOOLS_KEY, RESPONSE_JSON_SCHEMA_KEY, THINKING_LEVEL_KEY})

MAX_STOP_SEQUENCES = 5

FINISH_FROM_GEMINI: dict[str, ir.FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "MALFORMED_FUNCTION_CALL": "error",
    "UNEXPECTED_TOOL_CALL": "error",
    "LANGUAGE": "other",
    "OTHER": "other",
    "FINISH_REASON_UNSPECIFIED": "other",
    "TOO_MANY_TOOL_CALLS": "other",
}
FINISH_TO_GEMINI = {
    "stop": "STOP",
    "length": "MAX_TOKENS",
    "tool_calls": "STOP",
    "content_filter": "SAFETY",
    "error": "OTHER",
    "other": "OTHER",
}

STATUS_BY_KIND = {
    "invalid_request": "INVALID_ARGUMENT",
    "authentication": "UNAUTHENTICATED",
    "permission": "PERMISSION_DENIED",
    "not_found": "NOT_FOUND",
    "request_too_large": "INVALID_ARGUMENT",
    "rate_limit": "RESOURCE_EXHAUSTED",
    "insufficient_quota": "RESOURCE_EXHAUSTED",
    "api_error": "INTERNAL",
    "bad_gateway": "UNAVAILABLE",
    "unavailable": "UNAVAILABLE",
    "timeout": "DEADLINE_EXCEEDED",
    "overloaded": "UNAVAILABLE",
}
KIND_BY_STATUS = {
    "INVALID_ARGUMENT": "invalid_request",
    "FAILED_PRECONDITION": "invalid_request",
    "OUT_OF_RANGE": "invalid_request",
    "UNAUTHENTICATED": "authentication",
    "PERMISSION_DENIED": "permission",
    "NOT_FOUND": "not_found",
    "RESOURCE_EXHAUSTED": "rate_limit",
    "INTERNAL": "api_error",
    "UNKNOWN": "api_error",
    "UNAVAILABLE": "unavailable",
    "DEADLINE_EXCEEDED": "timeout",
    "CANCELLED": "api_error",
}


# ---------------------------------------------------------------- field access


@lru_cache(maxsize=256)
def snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


@lru_cache(maxsize=256)
def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def get(obj: dict[str, Any], key: str) -> Any:
    """``obj[key]`` by its camelCase name, or by the snake_case one proto JSON also accepts."""
    value = obj.get(key)
    return obj.get(snake(key)) if value is None else value


def opt(obj: dict[str, Any], key: str, kinds: type | tuple[type, ...], path: str = "") -> Any:
    """``fields.opt`` by either field name (camelCase or snake_case)."""
    value = get(obj, key)
    return None if value is None else check(value, kinds, path + key)


def integer(obj: dict[str, Any], key: str, path: str = "") -> int | None:
    """``fields.integer`` by either field name; google-genai sends some (topK) as floats."""
    return fields.integer({key: get(obj, key)}, key, path)


def number(obj: dict[str, Any], key: str, path: str = "") -> float | None:
    return fields.number({key: get(obj, key)}, key, path)


# ---------------------------------------------------------------- signatures


def signature_meta(part: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """A part's thoughtSignature as IR provider_metadata (it must go back on the same part)."""
    sig = get(part, "thoughtSignature")
    return {"gemini": {"thoughtSignature": sig}} if isinstance(sig, str) and sig else None


def signature_of(meta: dict[str, dict[str, Any]] | None) -> str | None:
    sig = ((meta or {}).get("gemini") or {}).get("thoughtSignature")
    return sig if isinstance(sig, str) and sig else None


# ---------------------------------------------------------------- finish and usage


def finish_from_gemini(raw: str | None, saw_call: bool) -> ir.Finish:
    """Gemini says STOP after calling functions; the IR says tool_calls."""
    if raw is None:
        return ir.Finish("tool_calls" if saw_call else "stop")
    reason = FINISH_FROM_GEMINI.get(raw, "other")
    if reason == "stop" and saw_call:
        reason = "tool_calls"
    return ir.Finish(reason, raw)


def finish_to_gemini(finish: ir.Finish) -> str:
    """The upstream's own word when it was a Gemini word meaning the same thing, else ours."""
    raw = finish.raw
    if raw in FINISH_FROM_GEMINI and (FINISH_FROM_GEMINI[raw] == finish.reason or (raw == "STOP" and finish.reason == "tool_calls")):
        return raw  # type: ignore[return-value]
    return FINISH_TO_GEMINI[finish.reason]


def usage_from_gemini(raw: Any) -> ir.Usage:
    """promptTokenCount is the whole input (cached included); output counts thoughts too, as OpenAI's
    completion_tokens does, while Gemini's candidatesTokenCount leaves them out."""
    if not isinstance(raw, dict):
        return ir.Usage()
    prompt, candidates = raw.get("promptTokenCount"), raw.get("candidatesTokenCount")
    thoughts, tool_prompt = raw.get("thoughtsTokenCount"), raw.get("toolUsePromptTokenCount")
    output = None
    if candidates is not None or thoughts is not None:
        output = (candidates or 0) + (thoughts or 0)
    if prompt is not None and tool_prompt:
        prompt += tool_prompt
    return ir.Usage(
        input_tokens=prompt,
        output_tokens=output,
        cached_input_tokens=raw.get("cachedContentTokenCount"),
        reasoning_tokens=thoughts,
        raw=raw,
    )


def usage_to_gemini(usage: ir.Usage) -> dict[str, Any]:
    prompt, output, thoughts = usage.input_tokens or 0, usage.output_tokens or 0, usage.reasoning_tokens or 0
    out: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": max(0, output - thoughts),
        "totalTokenCount": prompt + output,
    }
    if usage.cached_input_tokens:
        out["cachedContentTokenCount"] = usage.cached_input_tokens
    if thoughts:
        out["thoughtsTokenCount"] = thoughts
    return out


def error_status(status: int, kind: str) -> int:
    """Google has no 529: an overloaded model is 503 UNAVAILABLE there."""
    return 503 if kind == "overloaded" or status == 529 else status


def error_body(status: int, kind: str, message: str, retry_after: float | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": error_status(status, kind), "message": message, "status": STATUS_BY_KIND.get(kind, "UNKNOWN")}
    if retry_after:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after:g}s"}]
    return {"error": error}
