"""Tool names every upstream accepts: safe names on the way out, the client's names on the way back.

MCP tools reach the model through agents under names such as
``mcp__my.server__get-page/v2``, sometimes longer than 64 characters; each
upstream protocol has its own rule for tool names (``Adapter.tool_names``)
and refuses a request that breaks it. Before encoding, every name in the
request that breaks the target's rule (the tools, the tool choice, the calls
and results in the history) is replaced by a safe name; the calls in the
answer are renamed back, so the client only ever sees its own names.

A safe name is the original with the characters the rule refuses turned into
``_``, a leading ``_`` where the first character is not allowed, and, when
it is too long or would collide with another name of the request, cut and
ended by ``_`` and a short hash of the original. It depends only on the
request's names, so the same history maps the same way every turn. Valid
names are never touched.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Callable, Iterable, Mapping

from . import ir


@dataclass(frozen=True, slots=True)
class ToolNameRule:
    """What one upstream protocol accepts as a tool name."""

    allowed: str  # a regex character class body, e.g. ``A-Za-z0-9_-``
    max_length: int
    first: str | None = None  # character class body the first character must be in (None: any allowed one)

    def accepts(self, name: str) -> bool:
        pattern = _PATTERNS.get(self)
        if pattern is None:
            pattern = _PATTERNS[self] = self._pattern()
        return pattern.fullmatch(name) is not None

    def _pattern(self) -> re.Pattern[str]:
        first = f"[{self.first}]" if self.first else f"[{self.allowed}]"
        return re.compile(f"{first}[{self.allowed}]{{0,{self.max_length - 1}}}")


_PATTERNS: dict[ToolNameRule, re.Pattern[str]] = {}  # one per protocol's rule: compiled once, not per name


HASH_LENGTH = 8


def safe_name(name: str, rule: ToolNameRule, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """A name ``rule`` accepts that is not in ``taken``; deterministic for the same arguments."""
    clean = re.compile(f"[^{rule.allowed}]").sub("_", name)
    if rule.first and not re.compile(f"[{rule.first}]").match(clean[:1]):
        clean = "_" + clean
    if clean and len(clean) <= rule.max_length and clean not in taken and rule.accepts(clean):
        return clean
    salt = ""
    for attempt in range(100):
        digest = hashlib.sha256(f"{name}{salt}".encode()).hexdigest()[:HASH_LENGTH]
        candidate = f"{clean[: rule.max_length - HASH_LENGTH - 1]}_{digest}"
        if candidate not in taken and rule.accepts(candidate):
            return candidate
        salt = f"\0{attempt}"
    raise AssertionError(f"no safe name found for {name!r}")  # 100 hash collisions in a row


@dataclass(frozen=True, slots=True)
class NameMap:
    """Safe name → the client's name, for the calls of one answer."""

    originals: dict[str, str]

    def restore(self, events: AsyncIterator[ir.Event]) -> AsyncIterator[ir.Event]:
        return _restore(events, self.originals)


def request_names(req: ir.Request) -> list[str]:
    """Every tool name the request holds: tools, tool choice, calls and results of the history."""
    names = [t.name for t in req.tools]
    if req.tool_choice is not None and req.tool_choice.name:
        names.append(req.tool_choice.name)
    for message in req.messages:
        for part in message.parts:
            if isinstance(part, (ir.ToolCall, ir.ToolResult)) and part.name:
                names.append(part.name)
    return names


def plan_names(names: Iterable[str], rule: ToolNameRule) -> dict[str, str]:
    """Original → safe for the names ``rule`` refuses; collision-free with each other and the valid ones."""
    unique = sorted(set(names))
    taken = {n for n in unique if rule.accepts(n)}
    renamed: dict[str, str] = {}
    for name in unique:
        if name not in taken:
            renamed[name] = safe_name(name, rule, taken)
            taken.add(renamed[name])
    return renamed


RenameExtras = Callable[[dict[str, dict[str, Any]], Mapping[str, str]], dict[str, dict[str, Any]]]


def fit_request(
    req: ir.Request, rule: ToolNameRule | None, rename_extras: RenameExtras | None = None
) -> tuple[ir.Request, NameMap | None]:
    """``req`` with names ``rule`` accepts, and the map back (None when nothing was renamed).

    ``rename_extras`` renames the tool names the upstream protocol's own
    fields (``Request.extras``) are keyed by (``Adapter.rename_tools_in_extras``).
    """
    if rule is None:
        return req, None
    names = request_names(req)
    if not names:  # most requests: no tools, no calls in the history
        return req, None
    renamed = plan_names(names, rule)
    if not renamed:
        return req, None
    tools = [replace(t, name=renamed.get(t.name, t.name)) for t in req.tools]
    choice = req.tool_choice
    if choice is not None and choice.name in renamed:
        choice = replace(choice, name=renamed[choice.name])
    messages = [_renamed_message(m, renamed) for m in req.messages]
    extras = rename_extras(req.extras, renamed) if rename_extras is not None else req.extras
    fitted = replace(req, tools=tools, tool_choice=choice, messages=messages, extras=extras)
    return fitted, NameMap({safe: original for original, safe in renamed.items()})


def _renamed_message(message: ir.Message, renamed: dict[str, str]) -> ir.Message:
    if not any(isinstance(p, (ir.ToolCall, ir.ToolResult)) and p.name in renamed for p in message.parts):
        return message
    parts: list[ir.Part] = [
        replace(p, name=renamed[p.name]) if isinstance(p, (ir.ToolCall, ir.ToolResult)) and p.name in renamed else p
        for p in message.parts
    ]
    return replace(message, parts=parts)


async def _restore(events: AsyncIterator[ir.Event], originals: dict[str, str]) -> AsyncIterator[ir.Event]:
    async for event in events:
        if isinstance(event, ir.ToolCallStart) and event.name in originals:
            event = replace(event, name=originals[event.name])
        yield event
