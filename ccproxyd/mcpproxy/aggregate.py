"""The aggregated tool list: which upstream tools are shown, under which names, routed where.

The naming rule (also in docs/mcp.md):

1. A server's ``tools`` allowlist and ``exclude`` denylist (shell-style
   patterns on the upstream tool name) pick its tools first.
2. A tool name offered by one server only is shown as it is.
3. A name offered by two or more servers is shown as ``SERVER__TOOL`` for
   each of them, so no server's tool hides another's.
4. Names are kept within MCP's rule (1 to 128 of ``A-Z a-z 0-9 _ - .``):
   other characters become ``_``; a name too long, or one that would still
   collide, is cut and given a short hash of server and tool.

Clashes are judged on every server's last known list, including servers
that are down at the moment, so a tool's name does not change when another
server drops out and comes back; a server that is down has its tools left
out of ``tools/list`` all the same.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Sequence

import orjson

from ..config import McpServer

SEPARATOR = "__"
MAX_NAME = 128
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_.\-]")


@dataclass(frozen=True, slots=True)
class ToolRoute:
    server: str
    tool: str  # the name the upstream knows it by


@dataclass(frozen=True, slots=True)
class ServerTools:
    """What the catalog needs to know of one upstream."""

    config: McpServer
    tools: Sequence[dict[str, Any]] | None  # last known listing; None: never listed
    up: bool


@dataclass(slots=True)
class Catalog:
    tools: list[dict[str, Any]] = field(default_factory=list)  # what tools/list shows
    routes: dict[str, ToolRoute] = field(default_factory=dict)  # shown name → owner (down servers too)
    version: str = ""  # changes whenever ``tools`` does

    def __post_init__(self) -> None:
        if not self.version:
            self.version = hashlib.sha256(orjson.dumps(self.tools)).hexdigest()[:16]


def selected(name: str, server: McpServer) -> bool:
    """The server's allowlist (empty: everything) minus its denylist."""
    if server.tools and not any(fnmatchcase(name, p) for p in server.tools):
        return False
    return not any(fnmatchcase(name, p) for p in server.exclude)


def fit_name(name: str, salt: str | None = None) -> str:
    """``name`` within MCP's characters and length; with ``salt``, made distinct by a hash of it."""
    clean = _NOT_ALLOWED.sub("_", name) or "_"
    if salt is None and len(clean) <= MAX_NAME:
        return clean
    digest = hashlib.sha256((salt or name).encode()).hexdigest()[:8]
    return f"{clean[: MAX_NAME - len(digest) - 1]}_{digest}"


def build_catalog(servers: Sequence[ServerTools]) -> Catalog:
    """Servers in config order; the result is the same for the same input."""
    picked: list[tuple[ServerTools, list[dict[str, Any]]]] = []
    for entry in servers:
        seen: set[str] = set()
        tools = []
        for tool in entry.tools or ():
            name = tool["name"]
            if name not in seen and selected(name, entry.config):
                seen.add(name)
                tools.append(tool)
        picked.append((entry, tools))
    offered = Counter(tool["name"] for _, tools in picked for tool in tools)

    listed: list[dict[str, Any]] = []
    routes: dict[str, ToolRoute] = {}
    for entry, tools in picked:
        server = entry.config.name
        for tool in tools:
            name = tool["name"]
            wanted = name if offered[name] == 1 else f"{server}{SEPARATOR}{name}"
            shown = fit_name(wanted)
            if shown in routes:
                shown = fit_name(wanted, salt=f"{server}\0{name}")
            routes[shown] = ToolRoute(server, name)
            if entry.up:
                listed.append(tool if shown == name else {**tool, "name": shown})
    return Catalog(listed, routes)


def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"tools:{offset}".encode()).decode().rstrip("=")


def decode_cursor(cursor: Any) -> int | None:
    """The offset in a cursor we issued, or None for anything else."""
    if not isinstance(cursor, str) or len(cursor) > 64:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    prefix, _, number = text.partition(":")
    if prefix != "tools" or not number.isdigit():
        return None
    return int(number)
