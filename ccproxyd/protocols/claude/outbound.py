"""The unified request → a Claude Messages request, fixed up for what Claude demands.

Claude is the strictest upstream of the four, so this module repairs what other
clients legitimately send:

- Messages alternate user/assistant and start with user: same-role runs are
  merged, ``tool`` messages become user messages, and a conversation opening
  with the assistant gets a short user turn before it.
- System prompts: leading system messages join the top-level ``system``; a
  system message in mid-conversation (Claude Code sends those) becomes a
  ``<system-reminder>`` text in a user turn at the same place, so the prompt
  prefix, and with it the prompt cache, stays stable.
- No empty text blocks; trailing whitespace is cut from a final assistant turn.
- Every tool_use is answered at the start of the next user message: results are
  moved first, a missing one is answered with an error result, a result with no
  matching call becomes text.
- Thinking is replayed only with a signature Claude made; other reasoning is
  dropped (Claude rejects unsigned thinking).
- ``temperature`` is clamped to 0..1 (OpenAI allows up to 2); with both
  temperature and top_p given, top_p is dropped (current models reject both).
- ``thinking`` is sent as ``enabled`` with a budget (from ``effort`` when the
  client gave no budget), ``max_tokens`` raised above it. While thinking is on,
  temperature (unless 1) and top_k are dropped and top_p raised to 0.95, as
  Claude requires; thinking is turned off when tool_choice forces a tool, or
  when the last assistant turn called tools without a Claude-signed thinking
  block first (Claude rejects both).
- At most four ``cache_control`` breakpoints: the excess is dropped, oldest
  (earliest in tools → system → messages order) first.
"""

from __future__ import annotations

from typing import Any

from ... import ir
from .. import files
from ..base import UpstreamCall, UpstreamTarget
from ..fields import split_data_url
from .wire import (
    API_VERSION,
    BETA_KEY,
    DEFAULT_MAX_TOKENS,
    INTERNAL_KEYS,
    MAX_CACHE_BREAKPOINTS,
    MIN_THINKING_BUDGET,
    SERVER_TOOLS_KEY,
    TOOL_FIELDS_KEY,
    claude_meta,
    claude_signature,
    safe_tool_id,
)

OPENING_TURN = "Continue."  # the user turn put before a conversation that opens with the assistant
MISSING_RESULT = "No result was recorded for this tool call."
JSON_OBJECT_NOTE = "Reply with a single valid JSON object and nothing else."
# provider_metadata["claude"] keys that are ours, not block fields
_META_INTERNAL = frozenset({"signed", "signature", "block", "document", "media_type"})
# Body fields the count_tokens endpoint takes.
_COUNT_FIELDS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "output_config", "cache_control",
     "context_management", "mcp_servers", "speed"}
)


def encode_request(req: ir.Request, target: UpstreamTarget) -> UpstreamCall:
    body = encode_body(req, target)
    return UpstreamCall(f"{target.provider.base_url}/v1/messages", _headers(req, target), body, req.stream)


def encode_count_tokens_request(req: ir.Request, target: UpstreamTarget) -> UpstreamCall:
    body = {k: v for k, v in encode_body(req, target).items() if k in _COUNT_FIELDS}
    return UpstreamCall(f"{target.provider.base_url}/v1/messages/count_tokens", _headers(req, target), body, False)


def _headers(req: ir.Request, target: UpstreamTarget) -> dict[str, str]:
    headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
    if target.api_key:
        headers["x-api-key"] = target.api_key
    beta = req.extras.get("claude", {}).get(BETA_KEY)
    if beta:
        headers["anthropic-beta"] = beta
    return headers


def encode_body(req: ir.Request, target: UpstreamTarget) -> dict[str, Any]:
    same = req.extras.get("claude", {})
    top_system, conversation = _split_system(req)
    messages = _encode_messages(conversation)
    body: dict[str, Any] = {"model": target.model, "messages": messages}
    system = [_text_block(p) for p in top_system if isinstance(p, ir.Text) and p.text.strip()]
    fmt = req.response_format
    if fmt and fmt.type == "json_object":
        system.append({"type": "text", "text": JSON_OBJECT_NOTE})
    if system:
        body["system"] = system

    tools = _encode_tools(req, same)
    if tools:
        body["tools"] = tools
        choice = _encode_tool_choice(req)
        if choice:
            body["tool_choice"] = choice

    max_tokens = req.max_tokens or DEFAULT_MAX_TOKENS
    cap = target.provider.max_tokens
    if cap:
        max_tokens = min(max_tokens, cap)
    thinking, max_tokens = _encode_thinking(req, same, max_tokens, cap)
    forced = body.get("tool_choice", {}).get("type") in ("any", "tool")
    if thinking and thinking.get("type") != "disabled" and (forced or not _last_tool_turn_thinks(messages)):
        thinking = {"type": "disabled"}
    body["max_tokens"] = max_tokens
    if thinking:
        body["thinking"] = thinking
    _encode_sampling(req, body, thinking_on=bool(thinking) and thinking.get("type") != "disabled")

    output_config = {k: v for k, v in (same.get("output_config") or {}).items() if k != "format"}
    if fmt and fmt.type == "json_schema" and fmt.schema is not None:
        output_config["format"] = {"type": "json_schema", "schema": fmt.schema}
    if output_config:
        body["output_config"] = output_config

    for key, value in same.items():
        if key not in INTERNAL_KEYS and key not in ("thinking", "output_config"):
            body.setdefault(key, value)
    if req.stream:
        body["stream"] = True
    _limit_cache_breakpoints(body)
    return body


# ---------------------------------------------------------------- messages


def _split_system(req: ir.Request) -> tuple[list[ir.Part], list[ir.Message]]:
    """Leading system messages join the top-level system; later ones become user-turn reminders."""
    top = list(req.system)
    rest: list[ir.Message] = []
    for msg in req.messages:
        if msg.role == "system" and not rest:
            top.extend(msg.parts)
        elif msg.role == "system":
            rest.append(ir.Message("user", [_reminder(p) for p in msg.parts]))
        else:
            rest.append(msg)
    return top, rest


def _reminder(part: ir.Part) -> ir.Part:
    if isinstance(part, ir.Text) and part.text:
        return ir.Text(f"<system-reminder>\n{part.text}\n</system-reminder>", part.provider_metadata)
    return part


def _encode_messages(conversation: list[ir.Message]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for msg in conversation:
        role = "assistant" if msg.role == "assistant" else "user"
        blocks = [b for p in msg.parts for b in _blocks(p, role)]
        if not blocks:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    if not messages or messages[0]["role"] != "user":
        messages.insert(0, {"role": "user", "content": [{"type": "text", "text": OPENING_TURN}]})
    _answer_tool_uses(messages)
    _trim_final_assistant(messages)
    return messages


def _blocks(part: ir.Part, role: str) -> list[dict[str, Any]]:
    """One part as Claude blocks: none when Claude would reject it in this role."""
    if isinstance(part, ir.Text):
        return _text_blocks(part)
    if isinstance(part, ir.Image):
        return [_image_block(part)]
    if isinstance(part, ir.File):
        return [_document_block(part)]
    if isinstance(part, ir.ToolCall) and role == "assistant":
        return [{"type": "tool_use", "id": safe_tool_id(part.id), "name": part.name, "input": part.arguments, **_extra(part.provider_metadata)}]
    if isinstance(part, ir.ToolResult) and role == "user":
        return [_tool_result_block(part)]
    if isinstance(part, ir.Reasoning) and role == "assistant":
        if part.redacted is not None:
            return [{"type": "redacted_thinking", "data": part.redacted}]
        signature = claude_signature(part)
        return [{"type": "thinking", "thinking": part.text, "signature": signature}] if signature else []
    return []


def _text_blocks(part: ir.Text) -> list[dict[str, Any]]:
    meta = claude_meta(part.provider_metadata)
    if "block" in meta:
        return [dict(meta["block"])]
    if not part.text.strip():  # Claude rejects empty and whitespace-only text blocks
        return []
    if "document" in meta:
        source = {"type": "text", "media_type": meta.get("media_type", "text/plain"), "data": part.text}
        return [{"type": "document", "source": source, **meta["document"]}]
    return [_text_block(part)]


def _text_block(part: ir.Text) -> dict[str, Any]:
    return {"type": "text", "text": part.text, **_extra(part.provider_metadata)}


def _image_block(part: ir.Image) -> dict[str, Any]:
    meta = claude_meta(part.provider_metadata)
    data, media_type = part.data, part.media_type
    if data is None and part.url:
        inline = split_data_url(part.url)
        if inline:
            media_type, data = inline
    if data is not None:
        source: dict[str, Any] = {"type": "base64", "media_type": media_type or "image/png", "data": data}
    else:
        source = {"type": "url", "url": part.url or ""}
    if "document" in meta or media_type == "application/pdf":
        return {"type": "document", "source": source, **meta.get("document", {})}
    return {"type": "image", "source": source, **_extra(part.provider_metadata)}


def _document_block(part: ir.File) -> dict[str, Any]:
    """Claude reads PDFs (base64) and plain text; text files arrive here already as text (see files.py)."""
    if part.media_type != files.PDF:
        raise files.refuse(part, "Claude", "PDF documents, plain text and images")
    meta = claude_meta(part.provider_metadata)
    extra = meta["document"] if "document" in meta else ({"title": part.filename} if part.filename else {})
    return {"type": "document", "source": {"type": "base64", "media_type": part.media_type, "data": part.data}, **extra}


def _tool_result_block(part: ir.ToolResult) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": safe_tool_id(part.call_id)}
    content = [b for p in part.content if isinstance(p, (ir.Text, ir.Image, ir.File)) for b in _blocks(p, "user")]
    if content:
        block["content"] = content
    if part.is_error:
        block["is_error"] = True
    block.update(_extra(part.provider_metadata))
    return block


def _extra(meta: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """Same-protocol block fields kept by the Claude decoder (cache_control, citations...)."""
    return {k: v for k, v in claude_meta(meta).items() if k not in _META_INTERNAL}


def _answer_tool_uses(messages: list[dict[str, Any]]) -> None:
    """Make each user turn open with exactly the results of the calls just before it, in call order."""
    i = 0
    while i < len(messages):
        msg = messages[i]
        if msg["role"] == "assistant":
            calls = [b["id"] for b in msg["content"] if b.get("type") == "tool_use"]
            if calls and i + 1 == len(messages):
                messages.append({"role": "user", "content": []})
        else:
            prev = messages[i - 1] if i else None
            calls = [b["id"] for b in prev["content"] if b.get("type") == "tool_use"] if prev else []
            msg["content"] = _results_first(msg["content"], calls)
        i += 1


def _results_first(content: list[dict[str, Any]], calls: list[str]) -> list[dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    rest: list[dict[str, Any]] = []
    for block in content:
        if block.get("type") != "tool_result":
            rest.append(block)
        elif block["tool_use_id"] in calls and block["tool_use_id"] not in results:
            results[block["tool_use_id"]] = block
        else:
            rest.extend(_result_as_text(block))
    answered = [results.get(c) or {"type": "tool_result", "tool_use_id": c, "is_error": True, "content": MISSING_RESULT} for c in calls]
    return answered + rest


def _result_as_text(block: dict[str, Any]) -> list[dict[str, Any]]:
    """A result whose call is not in the turn before: Claude would reject it as a result, so it stays as text."""
    content = block.get("content") or []
    text = "\n".join(b["text"] for b in content if b.get("type") == "text")
    head = f"[Result of tool call {block['tool_use_id']}{' (error)' if block.get('is_error') else ''}]"
    return [{"type": "text", "text": f"{head}\n{text}" if text else head}] + [b for b in content if b.get("type") != "text"]


def _trim_final_assistant(messages: list[dict[str, Any]]) -> None:
    """Claude rejects a final (prefilled) assistant turn ending in whitespace."""
    last = messages[-1]
    if last["role"] != "assistant" or last["content"][-1].get("type") != "text":
        return
    block = last["content"][-1]
    block["text"] = block["text"].rstrip()
    if not block["text"]:
        last["content"].pop()
        if not last["content"]:
            messages.pop()


def _last_tool_turn_thinks(messages: list[dict[str, Any]]) -> bool:
    """Whether thinking may stay on: Claude demands that the last assistant turn, when it called
    tools, opens with a thinking block."""
    for msg in reversed(messages):
        if msg["role"] == "assistant":
            if not any(b.get("type") == "tool_use" for b in msg["content"]):
                return True
            return msg["content"][0].get("type") in ("thinking", "redacted_thinking")
    return True


# ---------------------------------------------------------------- tools, sampling, thinking


def _encode_tools(req: ir.Request, same: dict[str, Any]) -> list[dict[str, Any]]:
    fields = same.get(TOOL_FIELDS_KEY) or {}
    tools = []
    for tool in req.tools:
        schema = dict(tool.parameters) if tool.parameters else {}
        schema.setdefault("type", "object")
        entry: dict[str, Any] = {"name": tool.name}
        if tool.description:
            entry["description"] = tool.description
        entry["input_schema"] = schema
        entry.update(fields.get(tool.name) or {})
        tools.append(entry)
    tools.extend(dict(t) for t in same.get(SERVER_TOOLS_KEY) or ())
    return tools


def _encode_tool_choice(req: ir.Request) -> dict[str, Any] | None:
    choice = req.tool_choice
    if choice is None:
        return {"type": "auto", "disable_parallel_tool_use": True} if req.parallel_tool_calls is False else None
    if choice.mode == "none":
        return {"type": "none"}
    out: dict[str, Any]
    if choice.mode == "tool" and choice.name:
        out = {"type": "tool", "name": choice.name}
    elif choice.mode == "required":
        out = {"type": "any"}
    else:
        out = {"type": "auto"}
    if req.parallel_tool_calls is False:
        out["disable_parallel_tool_use"] = True
    return out


def _encode_thinking(req: ir.Request, same: dict[str, Any], max_tokens: int, cap: int | None) -> tuple[dict[str, Any] | None, int]:
    config = req.reasoning
    if config is None:
        return None, max_tokens
    if not config.enabled:
        return {"type": "disabled"}, max_tokens
    raw = same.get("thinking") if isinstance(same.get("thinking"), dict) else None
    if raw and raw.get("type") != "enabled":
        return dict(raw), max_tokens  # adaptive and other forms only a Claude client sends: as sent
    budget = max(MIN_THINKING_BUDGET, config.budget_tokens or ir.effort_to_budget(config.effort))
    if max_tokens <= budget:
        max_tokens += budget  # the client's max_tokens stays the room for the answer
    if cap and max_tokens > cap:
        max_tokens = cap
        budget = min(budget, cap - 1)
        if budget < MIN_THINKING_BUDGET:
            return None, max_tokens
    return {**(raw or {}), "type": "enabled", "budget_tokens": budget}, max_tokens


def _encode_sampling(req: ir.Request, body: dict[str, Any], thinking_on: bool) -> None:
    temperature = None if req.temperature is None else min(1.0, max(0.0, req.temperature))
    top_p, top_k = req.top_p, req.top_k
    if thinking_on:
        temperature = temperature if temperature == 1.0 else None
        top_k = None
        top_p = None if top_p is None else max(0.95, top_p)
    if temperature is not None:
        top_p = None  # current models reject both ("cannot both be specified"); temperature is the usual knob
    for key, value in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k)):
        if value is not None:
            body[key] = value
    stops = [s for s in req.stop if s]
    if stops:
        body["stop_sequences"] = stops


def _limit_cache_breakpoints(body: dict[str, Any]) -> None:
    """Claude allows four cache_control breakpoints; drop the oldest beyond that."""
    marked: list[dict[str, Any]] = [t for t in body.get("tools", ()) if "cache_control" in t]
    marked.extend(b for b in body.get("system", ()) if "cache_control" in b)
    for msg in body["messages"]:
        for block in msg["content"]:
            if "cache_control" in block:
                marked.append(block)
            if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
                marked.extend(b for b in block["content"] if "cache_control" in b)
    for block in marked[: max(0, len(marked) - MAX_CACHE_BREAKPOINTS)]:
        del block["cache_control"]
