"""Group and provider options applied to a request on its way up.

Works on the unified model before encoding (prompt injection, tool filter,
temperature ratio, max-tokens clamp) and on the encoded call after it (extra
body params, extra headers), so no protocol detail lives here.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import uuid
from typing import Mapping

from . import ir
from .config import Group, Provider
from .protocols.base import UpstreamCall

# Client headers passed upstream; anything else (the access key, hop-by-hop headers, cookies) stays here.
# x-request-id goes up too, always: it is ours (the client's own when it sent a usable one).
FORWARDED_HEADERS = ("user-agent", "x-client-request-id", "traceparent", "tracestate")
CLAUDE_ONLY_HEADERS = ("anthropic-beta",)


def use_compat(group: Group, provider: Provider, path_compat: bool) -> bool:
    """A provider without native tools always needs compat; otherwise the group decides, then the path."""
    if provider.tool_mode == "compat":
        return True
    if group.tool_mode != "auto":
        return group.tool_mode == "compat"
    return path_compat


def shape_request(req: ir.Request, group: Group, provider: Provider, alias: str, default_max_tokens: int | None = None) -> ir.Request:
    """A copy of ``req`` with the group's and provider's options applied; ``req`` is left untouched.

    ``default_max_tokens`` fills in a client's missing max_tokens, for upstreams that require one.
    """
    changes: dict = {}
    if group.tool_filter and req.tools:
        tools = [t for t in req.tools if not any(fnmatch.fnmatchcase(t.name, p) for p in group.tool_filter)]
        changes["tools"] = tools
        choice = req.tool_choice
        if choice and not tools and choice.mode in ("required", "tool"):
            changes["tool_choice"] = None
        elif choice and choice.mode == "tool" and choice.name not in {t.name for t in tools}:
            changes["tool_choice"] = ir.ToolChoice("auto")
    if group.temperature_ratio is not None and req.temperature is not None:
        changes["temperature"] = round(req.temperature * group.temperature_ratio, 6)
    max_tokens = req.max_tokens if req.max_tokens is not None else default_max_tokens
    if provider.max_tokens is not None and (max_tokens is None or max_tokens > provider.max_tokens):
        max_tokens = provider.max_tokens
    if max_tokens != req.max_tokens:
        changes["max_tokens"] = max_tokens
    if _injects(group, alias):
        changes.update(_inject(req, group))
    return dataclasses.replace(req, **changes) if changes else req


def shapes_nothing(group: Group, provider: Provider, alias: str, default_max_tokens: int | None = None) -> bool:
    """Whether :func:`shape_request` gives every request without tools back as it is (a relayed request's
    condition): no temperature ratio, no max_tokens cap or default, no prompt injection for ``alias``."""
    return (group.temperature_ratio is None and provider.max_tokens is None and default_max_tokens is None
            and not _injects(group, alias))


def _injects(group: Group, alias: str) -> bool:
    return group.prompt_injection != "off" and bool(group.prompt_text) and _injects_for(group, alias)


def _injects_for(group: Group, alias: str) -> bool:
    return not group.inject_for or any(fnmatch.fnmatchcase(alias, p) for p in group.inject_for)


def _inject(req: ir.Request, group: Group) -> dict:
    """``enhance`` appends the text, ``replace`` puts it in place of the client's system prompt.

    Position ``system``: to the system prompt. Position ``user``: to the last
    user message (for models that heed users more than system prompts);
    ``replace`` then also drops the system prompt. The text goes in as a part
    of its own, so the client's parts (and their cache marks) stay as they were.
    """
    text = group.prompt_text
    replace = group.prompt_injection == "replace"
    if group.prompt_position == "system":
        if replace:
            return {"system": [ir.Text(text)]}
        return {"system": [*req.system, ir.Text(_after(req.system, text))]}
    messages = list(req.messages)
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user":
            messages[i] = ir.Message("user", [*messages[i].parts, ir.Text(_after(messages[i].parts, text))])
            break
    else:
        messages.append(ir.Message("user", [ir.Text(text)]))
    changes: dict = {"messages": messages}
    if replace:
        changes["system"] = []
    return changes


def _after(parts: list[ir.Part], text: str) -> str:
    """The text, set off from the text before it (adapters that flatten parts join them with nothing)."""
    return f"\n\n{text}" if ir.text_of(parts) else text


def finish_call(call: UpstreamCall, provider: Provider, client_headers: Mapping[str, str], request_id: str) -> None:
    """Provider ``params`` merged into the body, provider ``headers`` and forwarded client headers added."""
    for key, value in provider.params:
        if isinstance(value, dict) and isinstance(call.body.get(key), dict):
            call.body[key] = {**call.body[key], **value}
        else:
            call.body[key] = value
    forwarded = FORWARDED_HEADERS + CLAUDE_ONLY_HEADERS if provider.protocol == "claude" else FORWARDED_HEADERS
    for name in forwarded:
        if name in client_headers and name not in call.headers:
            call.headers[name] = client_headers[name]
    call.headers["x-request-id"] = request_id
    for name, value in provider.headers:
        if "{" in value:
            value = value.replace("{uuid}", str(uuid.uuid4())).replace("{request_id}", request_id)
        call.headers[name.lower()] = value
