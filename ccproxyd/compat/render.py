"""Going up in compat mode: a tool-free request that teaches the model a call format.

The taught format is Hermes/Qwen's, the one most open models were trained on:
calls as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` and
results as ``<tool_response>`` blocks in the next user turn (see docs/compat.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from .. import ir
from .parse import BrokenCall, escape, scan_text
from .schema import describe_parameters

# Request keys that are native tool fields in some protocol: never forwarded in compat mode.
_TOOL_EXTRAS = frozenset(
    {"tools", "tool_choice", "toolConfig", "tool_config", "parallel_tool_calls", "functions", "function_call"}
)

_RULES = """\
# Tools

You can call the tools listed below. To call a tool, write a <tool_call> block holding one JSON object with the tool's name and its arguments:
<tool_call>
{"name": <tool-name>, "arguments": <arguments-json-object>}
</tool_call>

Rules for tool calls:
- "arguments" is a JSON object matching the tool's parameters: give every required parameter, use the declared types, and pick enum values only from the listed ones.
- {parallel}
- After your tool calls, end your reply. Results come back in the next message inside <tool_response name="..." id="..."> blocks; error="true" marks a call that failed. Never write <tool_response> blocks yourself.
- A <tool_call> block inside a code fence or quoted in prose is not run: write calls as plain text.
- {choice}"""

_PARALLEL = "To call several tools at once, write one <tool_call> block per call, one after another."
_SINGLE = "Call at most one tool per reply."
_AUTO = "If no tool is needed, answer normally, without any <tool_call> block."
_REQUIRED = "In this reply you must call at least one tool."
_SPECIFIC = "In this reply you must call the tool `{name}`."

CORRECTION = (
    "[ccproxyd: your previous reply contained a tool call that could not be used ({reason}); "
    "it was shown as plain text and not run. Write each call exactly as "
    '<tool_call>{{"name": <tool-name>, "arguments": <arguments-json-object>}}</tool_call> '
    "with valid JSON, a listed tool name and every required argument.]"
)


def instructions(tools: list[ir.Tool], choice: ir.ToolChoice | None, parallel: bool | None = None) -> str:
    """The text injected for the model: the call format, the rules and the tool catalogue."""
    mode = choice.mode if choice else "auto"
    if mode == "tool" and choice and choice.name:
        choice_line = _SPECIFIC.format(name=choice.name)
    else:
        choice_line = _REQUIRED if mode in ("required", "tool") else _AUTO
    text = _RULES.replace("{parallel}", _SINGLE if parallel is False else _PARALLEL).replace("{choice}", choice_line)
    return text + "\n\n## Available tools\n\n" + "\n\n".join(catalogue_entry(tool) for tool in tools)


def catalogue_entry(tool: ir.Tool) -> str:
    lines = [f"### {tool.name}"]
    if tool.description.strip():
        lines.append(tool.description.strip())
    params = describe_parameters(tool.parameters if isinstance(tool.parameters, dict) else {})
    lines.append("Parameters:" if params else "Parameters: none")
    lines.extend(params)
    return "\n".join(lines)


def render_call(name: str, arguments: dict[str, Any]) -> str:
    """One call in the taught format, as history shows the model its own earlier calls."""
    return "<tool_call>\n" + orjson.dumps({"name": name, "arguments": arguments}).decode() + "\n</tool_call>"


def render_result(result: ir.ToolResult, name: str) -> list[ir.Part]:
    """A result block linked to its call by name and id; images and files stay themselves, inside the block."""
    error = ' error="true"' if result.is_error else ""
    head = f'<tool_response name="{escape(name)}" id="{escape(result.call_id)}"{error}>\n'
    parts: list[ir.Part] = []
    text = head
    for part in result.content:
        if isinstance(part, (ir.Image, ir.File)):
            parts.append(ir.Text(text))
            parts.append(part)
            text = "\n"
        elif isinstance(part, ir.Text):
            text += part.text
        elif isinstance(part, ir.ToolResult):  # nested results are not a thing any protocol sends; keep the text
            text += ir.text_of(part.content)
    if not result.content:
        text += "(no output)"
    parts.append(ir.Text(text.rstrip("\n") + "\n</tool_response>"))
    return parts


def broken_call_reason(message: ir.Message, tools: list[ir.Tool]) -> str | None:
    """Why an earlier assistant reply's call text was returned as text, if it was."""
    text = ir.text_of(message.parts)
    if "<tool_call>" not in text and "<cs:tool_use>" not in text:
        return None
    broken = [item for item in scan_text(text, tools) if isinstance(item, BrokenCall)]
    return broken[0].reason if broken else None


def prepare_request(req: ir.Request, position: str = "system") -> ir.Request:
    """A new request without native tool fields, teaching the model to call tools in text.

    History is re-rendered: assistant calls become call text, tool results
    become ``<tool_response>`` blocks in a user turn, and a reply whose call
    text was broken earns a short correction note in the next turn. The input
    request is left untouched (the dispatcher may retry it elsewhere).
    """
    names = {p.id: p.name for m in req.messages for p in m.parts if isinstance(p, ir.ToolCall)}
    messages: list[ir.Message] = []
    note: str | None = None
    for msg in req.messages:
        pieces: list[tuple[ir.Part, bool]] = []  # (part, rendered by us)
        if note and msg.role in ("user", "tool"):
            pieces.append((ir.Text(note), True))
            note = None
        for part in msg.parts:
            if isinstance(part, ir.ToolCall):
                pieces.append((ir.Text(render_call(part.name, part.arguments)), True))
            elif isinstance(part, ir.ToolResult):
                pieces.extend((p, True) for p in render_result(part, part.name or names.get(part.call_id, "")))
            else:
                pieces.append((part, False))
        role: ir.Role = "user" if msg.role == "tool" else msg.role
        if messages and messages[-1].role == role and role in ("user", "assistant"):
            pieces = [(p, True) for p in messages.pop().parts] + pieces
        messages.append(ir.Message(role, _join_text(pieces)))
        if msg.role == "assistant" and req.tools:
            reason = broken_call_reason(msg, req.tools)
            note = CORRECTION.format(reason=reason) if reason else None

    system = list(req.system)
    choice = req.tool_choice
    if req.tools and not (choice and choice.mode == "none"):
        text = instructions(req.tools, choice, req.parallel_tool_calls)
        last_user = next((m for m in reversed(messages) if m.role == "user"), None)
        if position == "user" and last_user is not None:
            last_user.parts = _append_text(last_user.parts, text)
        else:
            system = _append_text(system, text)

    extras = {proto: {k: v for k, v in fields.items() if k not in _TOOL_EXTRAS} for proto, fields in req.extras.items()}
    return dataclasses.replace(
        req,
        system=system,
        messages=messages,
        tools=[],
        tool_choice=None,
        parallel_tool_calls=None,
        extras=extras,
    )


def _join_text(pieces: list[tuple[ir.Part, bool]]) -> list[ir.Part]:
    """Adjacent text we rendered (and the prose around it) as one text part, lines apart."""
    parts: list[ir.Part] = []
    last_ours = False
    for part, ours in pieces:
        prev = parts[-1] if parts else None
        if (
            (ours or last_ours)
            and isinstance(part, ir.Text)
            and isinstance(prev, ir.Text)
            and part.provider_metadata is None
            and prev.provider_metadata is None
        ):
            sep = "" if prev.text.endswith("\n") or part.text.startswith("\n") or not prev.text else "\n"
            parts[-1] = ir.Text(prev.text + sep + part.text)
        else:
            parts.append(part)
        last_ours = ours
    return parts


def _append_text(parts: list[ir.Part], text: str) -> list[ir.Part]:
    if parts and isinstance(parts[-1], ir.Text) and parts[-1].provider_metadata is None:
        return [*parts[:-1], ir.Text(parts[-1].text.rstrip() + "\n\n" + text)]
    return [*parts, ir.Text(text)]
