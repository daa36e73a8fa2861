"""Routing rules: the first of a group's rules whose conditions all hold names the alias to use.

Rules read only the unified request (``ir.Request``), so one rule set routes
all client protocols alike: whether thinking was asked for, the offered tools
and the images are facts each adapter's ``decode_request`` fills in. A group
without rules costs the dispatcher one truth test; the token estimate is
computed only when a rule gets as far as asking for it, and at most once.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Iterable

from . import ir

if TYPE_CHECKING:  # config.py imports covers() from here
    from .config import RouteRule, When


def choose(rules: Iterable[RouteRule], req: ir.Request, protocol: str | None) -> RouteRule | None:
    """The first rule that matches ``req`` sent in ``protocol``; None when none does."""
    tokens: list[int] = []  # the estimate, once computed
    for rule in rules:
        if matches(rule.when, req, protocol, tokens):
            return rule
    return None


def matches(when: When, req: ir.Request, protocol: str | None, tokens: list[int] | None = None) -> bool:
    """Whether every condition given in ``when`` holds; cheap conditions are tested first."""
    if when.stream is not None and when.stream != req.stream:
        return False
    if when.protocol is not None and protocol not in when.protocol:
        return False
    if when.thinking is not None and when.thinking != req.wants_thinking:
        return False
    if when.model is not None and not _any_match((req.model,), when.model):
        return False
    if when.tools_include is not None and not _any_match(offered_tools(req), when.tools_include):
        return False
    if when.images is not None and when.images != has_images(req):
        return False
    if when.context_tokens_over is not None:
        if tokens is None:
            tokens = []
        if not tokens:
            tokens.append(ir.estimate_tokens(req))
        if tokens[0] <= when.context_tokens_over:
            return False
    return True


def offered_tools(req: ir.Request) -> Iterable[str]:
    """The names of the client's own tools and of the provider-run ones it asked for."""
    for tool in req.tools:
        yield tool.name
    yield from req.builtin_tools


def has_images(req: ir.Request) -> bool:
    """Whether any message, tool result included, carries an image."""
    stack: list[ir.Part] = [part for msg in req.messages for part in msg.parts]
    stack.extend(req.system)
    while stack:
        part = stack.pop()
        if isinstance(part, ir.Image):
            return True
        if isinstance(part, ir.ToolResult):
            stack.extend(part.content)
    return False


def _any_match(names: Iterable[str], patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for name in names for p in patterns)


# ---------------------------------------------------------------- for `ccproxyd check`


def covers(earlier: When, later: When) -> bool:
    """Whether every request ``later`` matches is matched by ``earlier`` too, so a later rule could never win.

    Decided from the conditions alone, conservatively: a True is always right,
    a False may miss a subtle overlap of patterns.
    """
    for name in earlier.__dataclass_fields__:
        first, then = getattr(earlier, name), getattr(later, name)
        if first is None:
            continue
        if then is None:
            return False
        if name == "context_tokens_over":
            if then < first:
                return False
        elif name in ("model", "tools_include"):
            if not all(any(_pattern_covers(p, q) for p in first) for q in then):
                return False
        elif name == "protocol":
            if not set(then) <= set(first):
                return False
        elif first != then:
            return False
    return True


def _pattern_covers(pattern: str, other: str) -> bool:
    """Whether every name ``other`` matches is matched by ``pattern`` (equal, ``*``, or ``other`` a plain name it matches)."""
    return pattern == other or pattern == "*" or (not any(c in other for c in "*?[") and fnmatch.fnmatchcase(other, pattern))


def describe(when: When) -> str:
    """The conditions as written in the config, for ``ccproxyd check``."""
    given = []
    for name in when.__dataclass_fields__:
        value = getattr(when, name)
        if value is None:
            continue
        if isinstance(value, tuple):
            value = value[0] if len(value) == 1 else list(value)
        given.append(f"{name}={str(value).lower() if isinstance(value, bool) else value}")
    return ", ".join(given) or "always"
