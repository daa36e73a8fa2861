"""The Responses API's shared vocabulary: ids, usage, status, errors.

A reasoning item's ``encrypted_content`` is the IR reasoning part wrapped by
:mod:`..carry`: whatever the upstream needs to continue (a Claude signature,
Gemini thought signatures, a Responses upstream's own blob), so multi-turn
reasoning with tools works with ``store: false``.
"""

from __future__ import annotations

from typing import Any

from ... import ir
from ...errors import ProxyError
from ..openai import ERROR_TYPES

NAME = "responses"
ENCRYPTED_INCLUDE = "reasoning.encrypted_content"

# Keys of extras["responses"] that are ours, not body fields (never sent upstream).
ID = "_id"  # the id of the response being made
STORE = "_store"  # keep it for previous_response_id / GET
PREVIOUS = "_previous"  # previous_response_id
INPUT = "_input"  # the client's input items, normalised to a list
ENCRYPTED = "_encrypted"  # include asks for reasoning.encrypted_content
SUMMARY = "_summary"  # reasoning.summary asked for (show reasoning text as summaries)
TOOL_NAMES = "_tool_names"  # flat upstream name → [namespace or None, name, kind] for namespace and custom tools
HOSTED = "_hosted"  # OpenAI-hosted tools, passed only to a Responses upstream
ECHO = "_echo"  # request fields the response object repeats (instructions, tools, temperature...)
HISTORY = "_history"  # the items of the stored conversation this request continues
STRICT = "_strict"  # names of the function tools the client marked strict
PRIVATE = frozenset({ID, STORE, PREVIOUS, INPUT, ENCRYPTED, SUMMARY, TOOL_NAMES, HOSTED, ECHO, HISTORY, STRICT})


def new_id(prefix: str) -> str:
    return f"{prefix}_{ir.random_hex()}"


def item_id(response_id: str, prefix: str, index: int) -> str:
    """Item ids derived from the response id, the same whether the answer was streamed or not."""
    return f"{prefix}_{response_id.partition('_')[2] or response_id}{index:03d}"


def state(req: ir.Request) -> dict[str, Any]:
    return req.extras.get(NAME) or {}


# ---------------------------------------------------------------- usage


def usage_to_responses(usage: ir.Usage) -> dict[str, Any]:
    inp, out = usage.input_tokens or 0, usage.output_tokens or 0
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": usage.cached_input_tokens or 0},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens or 0},
        "total_tokens": inp + out,
    }


def usage_from_responses(raw: Any) -> ir.Usage:
    if not isinstance(raw, dict):
        return ir.Usage()
    return ir.Usage(
        input_tokens=raw.get("input_tokens"),
        output_tokens=raw.get("output_tokens"),
        cached_input_tokens=(raw.get("input_tokens_details") or {}).get("cached_tokens"),
        reasoning_tokens=(raw.get("output_tokens_details") or {}).get("reasoning_tokens"),
        raw=raw,
    )


# ---------------------------------------------------------------- status


def status_of(finish: ir.Finish) -> tuple[str, dict[str, str] | None]:
    """The response ``status`` and ``incomplete_details`` for a finish reason."""
    if finish.reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish.reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def finish_from(status: str | None, details: Any, saw_call: bool) -> ir.Finish:
    reason = (details or {}).get("reason") if isinstance(details, dict) else None
    if status == "incomplete":
        return ir.Finish("content_filter" if reason == "content_filter" else "length", reason or status)
    if status == "failed":
        return ir.Finish("error", status)
    return ir.Finish("tool_calls" if saw_call else "stop", status)


# ---------------------------------------------------------------- errors


def error_object(err: ProxyError) -> dict[str, Any]:
    """OpenAI's error object; an unknown stored response is an invalid request there, with its own code."""
    if err.kind == "not_found":
        code = "previous_response_not_found" if err.param == "previous_response_id" else "not_found"
        return {"message": err.message, "type": "invalid_request_error", "param": err.param, "code": code}
    return {"message": err.message, "type": ERROR_TYPES.get(err.kind, "server_error"), "param": err.param, "code": err.kind}
