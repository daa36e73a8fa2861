"""A Claude Messages request from a client → the unified request.

Everything Claude Code sends decodes: ``role: "system"`` messages mid-way,
``cache_control`` on blocks and tools, ``thinking: {type: adaptive}``,
``output_config``, ``context_management``, documents, server tools. Fields the
unified model has no slot for stay in ``extras["claude"]`` (or in the parts'
``provider_metadata["claude"]``) and reach only Claude upstreams.
"""

from __future__ import annotations

from typing import Any, Mapping

from multidict import CIMultiDict, CIMultiDictProxy

from ... import ir
from ...errors import ClientError
from .. import carry, files
from ..fields import check, image_from_url, integer, number, opt, req, string_list
from .wire import BETA_KEY, CLAUDE_THINKING, SERVER_TOOLS_KEY, TOOL_FIELDS_KEY

# Top-level fields the unified model carries; the rest go to extras["claude"] untouched.
_KNOWN = frozenset(
    {"model", "messages", "system", "max_tokens", "temperature", "top_p", "top_k", "stop_sequences", "stream",
     "tools", "tool_choice", "thinking", "output_format"}
)
_EFFORTS = {"minimal": "minimal", "low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}


def decode_request(body: dict[str, Any], headers: Mapping[str, str]) -> ir.Request:
    model = req(body, "model", str)
    extras: dict[str, Any] = {k: v for k, v in body.items() if k not in _KNOWN}
    beta = _header(headers, "anthropic-beta")
    if beta:
        extras[BETA_KEY] = beta
    messages = _decode_messages(req(body, "messages", list))
    ir.link_tool_results(messages)
    tools = _decode_tools(body.get("tools"), extras)
    tool_choice, parallel = _decode_tool_choice(body.get("tool_choice"))
    max_tokens = integer(body, "max_tokens")
    if max_tokens is not None and max_tokens < 1:
        raise ClientError("max_tokens must be at least 1", param="max_tokens")
    return ir.Request(
        model=model,
        messages=messages,
        system=_decode_system(body.get("system")),
        tools=tools,
        tool_choice=tool_choice,
        max_tokens=max_tokens,
        temperature=number(body, "temperature"),
        top_p=number(body, "top_p"),
        top_k=integer(body, "top_k"),
        stop=string_list(body, "stop_sequences"),
        stream=bool(opt(body, "stream", bool)),
        response_format=_decode_response_format(body),
        reasoning=_decode_thinking(body, extras),
        parallel_tool_calls=parallel,
        wants_thinking=(body.get("thinking") or {}).get("type") not in (None, "disabled"),
        builtin_tools=[str(t.get("name") or t["type"]) for t in extras.get(SERVER_TOOLS_KEY, ())],
        extras={"claude": extras},
    )


CASE_INSENSITIVE = (CIMultiDict, CIMultiDictProxy)  # header mappings whose get() finds any spelling


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None and not isinstance(headers, CASE_INSENSITIVE):  # plain dicts are case-sensitive; aiohttp's are not
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


# ---------------------------------------------------------------- content


def _decode_system(raw: Any) -> list[ir.Part]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [ir.Text(raw)] if raw else []
    check(raw, list, "system")
    parts: list[ir.Part] = []
    for i, block in enumerate(raw):
        at = f"system[{i}]"
        check(block, dict, at)
        if block.get("type", "text") != "text":
            raise ClientError(f"{at}.type must be text", param=f"{at}.type")
        parts.append(ir.Text(req(block, "text", str, at + "."), _meta(block, _TEXT_KEYS)))
    return parts


def _decode_messages(raw: list[Any]) -> list[ir.Message]:
    messages: list[ir.Message] = []
    for i, msg in enumerate(raw):
        at = f"messages[{i}]"
        check(msg, dict, at)
        role = req(msg, "role", str, at + ".")
        if role not in ("user", "assistant", "system"):
            raise ClientError(f"{at}.role {role!r} is not one of user, assistant, system", param=f"{at}.role")
        messages.append(ir.Message(role, _decode_content(msg.get("content"), at + ".content")))  # type: ignore[arg-type]
    return messages


def _decode_content(content: Any, path: str) -> list[ir.Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [ir.Text(content)] if content else []
    check(content, list, path)
    return [_decode_block(block, f"{path}[{i}]") for i, block in enumerate(content)]


def _decode_block(block: Any, at: str) -> ir.Part:
    check(block, dict, at)
    kind = req(block, "type", str, at + ".")
    if kind == "text":
        return ir.Text(req(block, "text", str, at + "."), _meta(block, _TEXT_KEYS))
    if kind == "image":
        source = req(block, "source", dict, at + ".")
        if source.get("type") == "file":
            return _opaque(block)
        return _decode_source(source, at + ".source", _meta(block, _SOURCE_KEYS))
    if kind == "document":
        return _decode_document(block, at)
    if kind == "tool_use":
        args = opt(block, "input", dict, at + ".") or {}
        return ir.ToolCall(req(block, "id", str, at + "."), req(block, "name", str, at + "."), args, _meta(block, _TOOL_USE_KEYS))
    if kind == "tool_result":
        content = block.get("content")
        parts = _decode_content(content, at + ".content")
        return ir.ToolResult(
            req(block, "tool_use_id", str, at + "."),
            "",
            parts,
            bool(opt(block, "is_error", bool, at + ".")),
            _meta(block, _TOOL_RESULT_KEYS),
        )
    if kind == "thinking":
        text = opt(block, "thinking", str, at + ".") or ""
        signature = opt(block, "signature", str, at + ".")
        if not signature:  # unsigned thinking is not Claude's and must never go back to Claude as such
            return ir.Reasoning(text)
        carried = carry.unwrap(signature)  # another upstream's reasoning, carried by this client for it
        if carried is not None:
            return carried
        return ir.Reasoning(text, signature, provider_metadata=_copy(CLAUDE_THINKING))
    if kind == "redacted_thinking":
        return ir.Reasoning(redacted=req(block, "data", str, at + "."), provider_metadata=_copy(CLAUDE_THINKING))
    return _opaque(block)


def _opaque(block: dict[str, Any]) -> ir.Text:
    """server_tool_use, web_search_tool_result, search_result, Files API sources...: the unified model has
    no slot for them, so they ride whole on an empty text that only a Claude upstream turns back into the block
    (every other upstream drops empty text)."""
    return ir.Text("", {"claude": {"block": block}})


def _decode_source(source: dict[str, Any], at: str, meta: dict[str, dict[str, Any]] | None) -> ir.Image:
    kind = source.get("type")
    if kind == "base64":
        return ir.Image(req(source, "media_type", str, at + "."), req(source, "data", str, at + "."), provider_metadata=meta)
    if kind == "url":
        return image_from_url(req(source, "url", str, at + "."), meta)
    raise ClientError(f"{at}.type {kind!r} is not one of base64, url, file", param=f"{at}.type")


def _decode_document(block: dict[str, Any], at: str) -> ir.Part:
    """Base64 PDFs become file parts (other providers read PDFs as such), plain-text documents text; the
    block's other fields (title, context, citations, cache_control) stay for a Claude upstream."""
    source = req(block, "source", dict, at + ".")
    extra = {k: v for k, v in block.items() if k not in ("type", "source")}
    meta = {"claude": {"document": extra}}
    if source.get("type") == "text":
        return ir.Text(req(source, "data", str, at + ".source."), {"claude": {"document": extra, "media_type": source.get("media_type", "text/plain")}})
    if source.get("type") in ("content", "file"):  # block documents, Files API ids: only Claude understands them
        return _opaque(block)
    if source.get("type") == "base64":
        media_type = req(source, "media_type", str, at + ".source.")
        if not media_type.startswith("image/"):
            part = files.decode_file(media_type, req(source, "data", str, at + ".source."), opt(block, "title", str, at + "."), at + ".source.data")
            if isinstance(part, ir.File):
                part.provider_metadata = meta
            return part
    return _decode_source(source, at + ".source", meta)


def _meta(block: dict[str, Any], known: frozenset[str]) -> dict[str, dict[str, Any]] | None:
    """Block fields the unified part has no slot for (cache_control, citations...). Most blocks have none,
    which one set comparison tells (a coding agent's request has hundreds of blocks)."""
    if block.keys() <= known:
        return None
    return {"claude": {k: v for k, v in block.items() if k not in known}}


# the fields of each kind of block that its unified part holds
_TEXT_KEYS = frozenset({"type", "text"})
_SOURCE_KEYS = frozenset({"type", "source"})
_TOOL_USE_KEYS = frozenset({"type", "id", "name", "input"})
_TOOL_RESULT_KEYS = frozenset({"type", "tool_use_id", "content", "is_error"})


def _copy(meta: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {k: dict(v) for k, v in meta.items()}


# ---------------------------------------------------------------- tools, options


def _decode_tools(raw: Any, extras: dict[str, Any]) -> list[ir.Tool]:
    if raw is None:
        return []
    check(raw, list, "tools")
    tools: list[ir.Tool] = []
    fields: dict[str, dict[str, Any]] = {}
    server: list[dict[str, Any]] = []
    for i, tool in enumerate(raw):
        at = f"tools[{i}]"
        check(tool, dict, at)
        if tool.get("type") not in (None, "custom"):
            server.append(tool)  # web_search_20250305, bash_20250124...: run by Claude itself
            continue
        name = req(tool, "name", str, at + ".")
        schema = opt(tool, "input_schema", dict, at + ".") or {"type": "object", "properties": {}}
        tools.append(ir.Tool(name, opt(tool, "description", str, at + ".") or "", schema))
        extra = {k: v for k, v in tool.items() if k not in ("name", "description", "input_schema")}
        if extra:
            fields[name] = extra
    if fields:
        extras[TOOL_FIELDS_KEY] = fields
    if server:
        extras[SERVER_TOOLS_KEY] = server
    return tools


def _decode_tool_choice(raw: Any) -> tuple[ir.ToolChoice | None, bool | None]:
    if raw is None:
        return None, None
    check(raw, dict, "tool_choice")
    kind = req(raw, "type", str, "tool_choice.")
    parallel = None if not opt(raw, "disable_parallel_tool_use", bool, "tool_choice.") else False
    if kind == "auto":
        return ir.ToolChoice("auto"), parallel
    if kind == "any":
        return ir.ToolChoice("required"), parallel
    if kind == "none":
        return ir.ToolChoice("none"), parallel
    if kind == "tool":
        return ir.ToolChoice("tool", req(raw, "name", str, "tool_choice.")), parallel
    raise ClientError(f"tool_choice.type {kind!r} is not one of auto, any, tool, none", param="tool_choice.type")


def _decode_thinking(body: dict[str, Any], extras: dict[str, Any]) -> ir.ReasoningConfig | None:
    """``thinking`` and ``output_config.effort`` → the neutral reasoning config.

    Forms the unified model cannot express (adaptive, display options) also stay
    whole in extras so a Claude upstream gets exactly what the client sent.
    """
    thinking = opt(body, "thinking", dict)
    config = opt(body, "output_config", dict)
    effort_word = opt(config, "effort", str, "output_config.") if config else None
    effort = _EFFORTS.get(effort_word or "")
    if thinking is None:
        return ir.ReasoningConfig(effort=effort) if effort else None  # type: ignore[arg-type]
    kind = req(thinking, "type", str, "thinking.")
    if kind == "disabled":
        return ir.ReasoningConfig(enabled=False)
    if kind == "enabled":
        budget = req(thinking, "budget_tokens", int, "thinking.")
        if set(thinking) - {"type", "budget_tokens"}:
            extras["thinking"] = thinking
        return ir.ReasoningConfig(effort=effort, budget_tokens=budget, include_thoughts=thinking.get("display") != "omitted")  # type: ignore[arg-type]
    extras["thinking"] = thinking  # adaptive, between_tools and whatever comes next
    return ir.ReasoningConfig(effort=effort, include_thoughts=thinking.get("display") != "omitted")  # type: ignore[arg-type]


def _decode_response_format(body: dict[str, Any]) -> ir.ResponseFormat | None:
    """``output_config.format`` (or the older top-level ``output_format``) → a JSON-schema response format."""
    config = opt(body, "output_config", dict)
    fmt = opt(config, "format", dict, "output_config.") if config else None
    path = "output_config.format."
    if fmt is None:
        fmt, path = opt(body, "output_format", dict), "output_format."
    if fmt is None:
        return None
    kind = req(fmt, "type", str, path)
    if kind != "json_schema":
        raise ClientError(f"{path}type {kind!r} is not json_schema", param=path + "type")
    return ir.ResponseFormat("json_schema", req(fmt, "schema", dict, path))
