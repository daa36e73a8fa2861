"""Responses API client requests → the unified model.

``input`` items become IR messages: runs of assistant-side items (``message``
with role assistant, ``reasoning``, ``function_call``, ``custom_tool_call``)
join one assistant message, each call output becomes a tool message. Tools
in a ``namespace`` are flattened to ``{namespace}__{name}`` and ``custom``
(free-form) tools become functions of one string argument ``input``; the
table in ``extras["responses"]`` maps the calls back. OpenAI-hosted tools
only reach a Responses upstream.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

from ... import ir
from ...errors import ClientError
from .. import carry, files
from ..fields import check, image_from_url, integer, number, opt, req
from . import wire

log = logging.getLogger("ccproxyd.responses")

_HANDLED = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "reasoning", "text",
    "max_output_tokens", "temperature", "top_p", "stream", "stream_options", "store", "previous_response_id", "include",
})
_ECHOED = ("instructions", "tool_choice", "temperature", "top_p", "max_output_tokens", "metadata", "parallel_tool_calls",
           "reasoning", "text", "previous_response_id", "user", "truncation", "prompt_cache_key", "safety_identifier", "service_tier")
_EFFORTS = {"minimal": "minimal", "low": "low", "medium": "medium", "high": "high", "xhigh": "high"}
CUSTOM_INPUT_SCHEMA = {"type": "object", "properties": {"input": {"type": "string", "description": "The raw input of the tool"}}, "required": ["input"]}


def decode_request(body: dict[str, Any], headers: Mapping[str, str]) -> ir.Request:
    model = req(body, "model", str)
    raw_input = body.get("input")
    items = normalise_input(raw_input)
    tools, names, hosted = _decode_tools(body.get("tools"))
    include = opt(body, "include", list) or []
    reasoning = _decode_reasoning(opt(body, "reasoning", dict))
    previous = opt(body, "previous_response_id", str)
    if body.get("conversation") is not None:
        raise ClientError("conversation objects are not supported by ccproxyd; use previous_response_id", param="conversation")
    if body.get("background"):
        raise ClientError("background responses are not supported by ccproxyd", param="background")
    instructions = opt(body, "instructions", str)
    state: dict[str, Any] = {k: v for k, v in body.items() if k not in _HANDLED}
    state.update({
        wire.ID: wire.new_id("resp"),
        wire.STORE: opt(body, "store", bool) is not False,
        wire.PREVIOUS: previous,
        wire.INPUT: items,
        wire.ENCRYPTED: wire.ENCRYPTED_INCLUDE in include,
        wire.SUMMARY: bool(reasoning and reasoning.enabled and reasoning.include_thoughts),
        wire.TOOL_NAMES: names,
        wire.HOSTED: hosted,
        wire.STRICT: sorted(_strict(body.get("tools"), names)),
        wire.ECHO: {"tools": body.get("tools") or [], **{k: body[k] for k in _ECHOED if k in body}},
    })
    system, messages = decode_items(items, names, allow_references=previous is not None)
    return ir.Request(
        model=model,
        messages=messages,
        system=system_prompt(instructions, system),
        tools=tools,
        tool_choice=_decode_tool_choice(body.get("tool_choice"), names),
        max_tokens=integer(body, "max_output_tokens"),
        temperature=number(body, "temperature"),
        top_p=number(body, "top_p"),
        stream=bool(opt(body, "stream", bool)),
        response_format=_decode_format(opt(body, "text", dict)),
        reasoning=reasoning,
        parallel_tool_calls=opt(body, "parallel_tool_calls", bool),
        extras={wire.NAME: state},
        wants_thinking=reasoning is not None and reasoning.enabled,
        builtin_tools=[str(t["type"]) for t in hosted],  # web_search, web_search_preview, file_search, ...
    )


def system_prompt(instructions: str | None, system: list[ir.Part]) -> list[ir.Part]:
    """``instructions`` and the leading system/developer messages, one paragraph each."""
    texts = [instructions] if instructions else []
    texts += [p.text for p in system if isinstance(p, ir.Text) and p.text]
    return [ir.Text("\n\n".join(texts))] if texts else []


def normalise_input(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}]
    check(raw, (str, list), "input")
    for i, item in enumerate(raw):
        check(item, dict, f"input[{i}]")
    return raw


# ---------------------------------------------------------------- items


def decode_items(
    items: list[dict[str, Any]], names: dict[str, list], allow_references: bool = False,
    lookup: Callable[[str], dict[str, Any] | None] = lambda _id: None,
) -> tuple[list[ir.Part], list[ir.Message]]:
    """Input items → (system parts, messages). ``lookup`` resolves ``item_reference`` ids."""
    system: list[ir.Part] = []
    messages: list[ir.Message] = []
    flat = {(ns, name): key for key, (ns, name, _kind) in names.items()}

    def assistant() -> list[ir.Part]:
        if not messages or messages[-1].role != "assistant":
            messages.append(ir.Message("assistant", []))
        return messages[-1].parts

    for i, item in enumerate(items):
        at = f"input[{i}]"
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "item_reference":
            ref = req(item, "id", str, at + ".")
            found = lookup(ref)
            if found is None:
                if allow_references:
                    continue  # resolved again once the stored conversation is loaded
                raise ClientError(f"{at}: item {ref!r} was not found; item_reference needs previous_response_id", param=f"{at}.id")
            item, kind = found, found.get("type") or "message"
        if kind == "message":
            role = req(item, "role", str, at + ".")
            parts = _content(item.get("content"), at + ".content")
            if role in ("system", "developer") and not messages:
                system.extend(parts)
            elif role in ("system", "developer"):
                messages.append(ir.Message("system", parts))
            elif role == "user":
                messages.append(ir.Message("user", parts))
            elif role == "assistant":
                assistant().extend(parts)
            else:
                raise ClientError(f"{at}.role {role!r} is not one of user, assistant, system, developer", param=f"{at}.role")
        elif kind in ("function_call", "custom_tool_call"):
            name = req(item, "name", str, at + ".")
            key = flat.get((opt(item, "namespace", str, at + "."), name), name)
            if kind == "custom_tool_call":
                args = {"input": opt(item, "input", str, at + ".") or ""}
            else:
                raw = opt(item, "arguments", (str, dict), at + ".") or "{}"
                args = raw if isinstance(raw, dict) else ir.parse_arguments(raw)
            assistant().append(ir.ToolCall(req(item, "call_id", str, at + "."), key, args))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = item.get("output")
            content = [ir.Text(output)] if isinstance(output, str) else _content(output, at + ".output")
            messages.append(ir.Message("tool", [ir.ToolResult(req(item, "call_id", str, at + "."), "", content)]))
        elif kind == "reasoning":
            part = _reasoning(item, at)
            if part is not None:
                assistant().append(part)
        else:
            log.debug("input item of type %r has no counterpart upstream; dropped", kind)
    ir.link_tool_results(messages)
    return system, messages


def _reasoning(item: dict[str, Any], at: str) -> ir.Reasoning | None:
    encrypted = opt(item, "encrypted_content", str, at + ".")
    if encrypted:
        ours = carry.unwrap(encrypted)
        if ours is not None:
            return ours
    texts = [s.get("text", "") for s in opt(item, "summary", list, at + ".") or () if isinstance(s, dict)]
    texts += [c.get("text", "") for c in opt(item, "content", list, at + ".") or () if isinstance(c, dict)]
    text = "\n\n".join(t for t in texts if isinstance(t, str) and t)
    if encrypted:  # a Responses upstream's own blob: only a Responses upstream can use it
        return ir.Reasoning(text, encrypted, provider_metadata={wire.NAME: {"id": item.get("id")}})
    return ir.Reasoning(text) if text else None


def _content(content: Any, at: str) -> list[ir.Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [ir.Text(content)] if content else []
    check(content, list, at)
    parts: list[ir.Part] = []
    for i, part in enumerate(content):
        where = f"{at}[{i}]"
        check(part, dict, where)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text", "summary_text"):
            parts.append(ir.Text(req(part, "text", str, where + ".")))
        elif kind == "refusal":
            parts.append(ir.Text(req(part, "refusal", str, where + ".")))
        elif kind == "input_image":
            url = opt(part, "image_url", str, where + ".")
            if not url:
                raise ClientError(f"{where}: input_image needs image_url (a URL or data URL); file_id is not supported", param=f"{where}.image_url")
            parts.append(image_from_url(url))
        elif kind == "input_file":
            parts.append(_file(part, where))
        else:
            raise ClientError(f"{where}.type {kind!r} is not supported (input_text, input_image, input_file, output_text, refusal)", param=f"{where}.type")
    return parts


def _file(part: dict[str, Any], where: str) -> ir.Part:
    """An inline file (``file_data`` data URL): an image, a text file (as text) or a document (see files.py)."""
    return files.decode_data_url(opt(part, "file_data", str, where + "."), opt(part, "filename", str, where + "."), where, "file_id or file_url")


# ---------------------------------------------------------------- tools


def _decode_tools(raw: Any) -> tuple[list[ir.Tool], dict[str, list], list[dict[str, Any]]]:
    """IR tools, the flat-name table for namespace/custom tools, and the hosted tools."""
    if raw is None:
        return [], {}, []
    check(raw, list, "tools")
    tools: list[ir.Tool] = []
    names: dict[str, list] = {}
    hosted: list[dict[str, Any]] = []
    for i, tool in enumerate(raw):
        at = f"tools[{i}]"
        check(tool, dict, at)
        kind = tool.get("type")
        if kind == "namespace":
            ns = req(tool, "name", str, at + ".")
            for j, inner in enumerate(req(tool, "tools", list, at + ".")):
                check(inner, dict, f"{at}.tools[{j}]")
                flat = f"{ns.rstrip('_')}__{req(inner, 'name', str, f'{at}.tools[{j}].')}"
                tools.append(_function(inner, f"{at}.tools[{j}]", flat))
                names[flat] = [ns, inner["name"], inner.get("type") or "function"]
        elif kind in ("function", "custom"):
            tool_ir = _function(tool, at, req(tool, "name", str, at + "."))
            tools.append(tool_ir)
            if kind == "custom":
                names[tool_ir.name] = [None, tool_ir.name, "custom"]
        elif isinstance(kind, str):  # OpenAI-hosted: web_search, file_search, code_interpreter, image_generation, mcp...
            log.debug("hosted tool %r goes only to Responses upstreams", kind)
            hosted.append(tool)
        else:
            raise ClientError(f"{at}.type is required", param=f"{at}.type")
    return tools, names, hosted


def _strict(raw: Any, names: dict[str, list]) -> set[str]:
    """The (flat) names of the function tools marked ``strict: true``."""
    flat = {(ns, name): key for key, (ns, name, _kind) in names.items()}
    out: set[str] = set()
    for tool in raw if isinstance(raw, list) else ():
        ns = tool.get("name") if tool.get("type") == "namespace" else None
        for fn in tool.get("tools") or () if ns else (tool,):
            if isinstance(fn, dict) and fn.get("strict") is True and isinstance(fn.get("name"), str):
                out.add(flat.get((ns, fn["name"]), fn["name"]))
    return out


def _function(tool: dict[str, Any], at: str, name: str) -> ir.Tool:
    description = opt(tool, "description", str, at + ".") or ""
    if tool.get("type") == "custom":
        fmt = tool.get("format") if isinstance(tool.get("format"), dict) else {}
        if fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
            description += f"\n\nThe input must follow this {fmt.get('syntax', '')} grammar:\n{fmt['definition']}"
        return ir.Tool(name, description, CUSTOM_INPUT_SCHEMA)
    params = opt(tool, "parameters", dict, at + ".") or {"type": "object", "properties": {}}
    return ir.Tool(name, description, params)


def _decode_tool_choice(raw: Any, names: dict[str, list]) -> ir.ToolChoice | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        if raw not in ("auto", "none", "required"):
            raise ClientError(f"tool_choice {raw!r} is not one of auto, none, required", param="tool_choice")
        return ir.ToolChoice(raw)  # type: ignore[arg-type]
    check(raw, dict, "tool_choice")
    kind = raw.get("type")
    if kind in ("function", "custom"):
        name = req(raw, "name", str, "tool_choice.")
        flat = next((k for k, (_ns, n, _kind) in names.items() if n == name and k != name), name)
        return ir.ToolChoice("tool", flat)
    if kind == "allowed_tools":
        return ir.ToolChoice("required" if raw.get("mode") == "required" else "auto")
    if isinstance(kind, str):  # a hosted tool: only a Responses upstream has it
        return ir.ToolChoice("tool", kind)
    raise ClientError("tool_choice.type is required", param="tool_choice.type")


# ---------------------------------------------------------------- reasoning and format


def _decode_reasoning(raw: dict[str, Any] | None) -> ir.ReasoningConfig | None:
    if raw is None:
        return None
    effort = opt(raw, "effort", str, "reasoning.")
    summary = opt(raw, "summary", str, "reasoning.") or opt(raw, "generate_summary", str, "reasoning.")
    if effort == "none":
        return ir.ReasoningConfig(enabled=False)
    if effort is not None and effort not in _EFFORTS:
        raise ClientError(f"reasoning.effort {effort!r} is not one of none, minimal, low, medium, high, xhigh", param="reasoning.effort")
    return ir.ReasoningConfig(effort=_EFFORTS.get(effort or ""), include_thoughts=summary is not None)  # type: ignore[arg-type]


def _decode_format(text: dict[str, Any] | None) -> ir.ResponseFormat | None:
    fmt = opt(text or {}, "format", dict, "text.")
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind == "json_schema":
        return ir.ResponseFormat("json_schema", req(fmt, "schema", dict, "text.format."), opt(fmt, "name", str, "text.format."))
    if kind in ("json_object", "text"):
        return ir.ResponseFormat(kind)
    raise ClientError(f"text.format.type {kind!r} is not one of text, json_object, json_schema", param="text.format.type")
