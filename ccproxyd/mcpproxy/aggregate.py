"""The aggregated lists: which upstream tools, prompts and resources are shown, under which names, routed where.

The naming rule for tools (also in docs/mcp.md; prompts follow it too, without the filters):

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

Resource URIs and URI templates are shown as they are unless two servers
offer the same one; then each is shown as ``PREFIX+URI`` (see ``UriMap``).
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
    resources: Sequence[dict[str, Any]] = ()
    templates: Sequence[dict[str, Any]] = ()
    prompts: Sequence[dict[str, Any]] = ()


@dataclass(slots=True)
class Catalog:
    tools: list[dict[str, Any]] = field(default_factory=list)  # what tools/list shows
    routes: dict[str, ToolRoute] = field(default_factory=dict)  # shown name → owner (down servers too)
    version: str = ""  # changes whenever ``tools`` does
    prompts: list[dict[str, Any]] = field(default_factory=list)
    prompt_routes: dict[str, ToolRoute] = field(default_factory=dict)
    resources: list[dict[str, Any]] = field(default_factory=list)
    templates: list[dict[str, Any]] = field(default_factory=list)
    uris: UriMap = field(default_factory=lambda: UriMap({}, {}, [], ()))

    def __post_init__(self) -> None:
        if not self.version:
            self.version = _digest(self.tools)

    def listing(self, kind: str) -> list[dict[str, Any]]:
        """What ``tools/list``, ``resources/list``, ``resources/templates/list`` or ``prompts/list`` shows."""
        return {"tools": self.tools, "resources": self.resources, "resourceTemplates": self.templates, "prompts": self.prompts}[kind]

    def versions(self) -> dict[str, str]:
        """A version per list_changed notification: tools, resources (with templates), prompts."""
        return {"tools": self.version, "resources": _digest([self.resources, self.templates]), "prompts": _digest(self.prompts)}


def _digest(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value)).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class UriMap:
    """Where a client's resource URI goes: the server and the URI that server knows.

    A URI (or URI template) offered by two or more servers is shown as
    ``PREFIX+URI`` for each, PREFIX being the server's name made fit for a
    URI scheme (``docs+file:///readme.md``); the prefix is taken off again
    on the way to the server, for template expansions too.
    """

    exact: dict[str, ToolRoute]  # shown URI of a listed resource → owner and upstream URI
    prefixes: dict[str, str]  # URI prefix → server
    templates: list[tuple[str, str]]  # (literal start of an unprefixed template, server), longest first
    resource_servers: tuple[str, ...]  # servers that offer resources at all; () while a server's lists are unknown

    def resolve(self, uri: str) -> tuple[str, str, str] | None:
        """(server, upstream URI, prefix added to it or "") for a URI a client sent."""
        route = self.exact.get(uri)
        if route is not None:
            prefix = uri[: len(uri) - len(route.tool)] if uri != route.tool else ""
            return route.server, route.tool, prefix
        head, plus, rest = uri.partition("+")
        if plus and head in self.prefixes:
            return self.prefixes[head], rest, head + "+"
        for start, server in self.templates:
            if uri.startswith(start):
                return server, uri, ""
        if len(self.resource_servers) == 1:
            return self.resource_servers[0], uri, ""
        return None


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
    picked = [
        (entry, [t for t in _unique(entry.tools or (), "name") if selected(t["name"], entry.config)]) for entry in servers
    ]
    listed, routes = _named(picked)
    prompts, prompt_routes = _named([(entry, _unique(entry.prompts, "name")) for entry in servers])
    resources, templates, uris = _uris(servers)
    return Catalog(listed, routes, prompts=prompts, prompt_routes=prompt_routes, resources=resources, templates=templates, uris=uris)


def _unique(items: Sequence[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    seen: set[str] = set()
    kept = []
    for item in items:
        if item[key] not in seen:
            seen.add(item[key])
            kept.append(item)
    return kept


def _named(picked: list[tuple[ServerTools, list[dict[str, Any]]]]) -> tuple[list[dict[str, Any]], dict[str, ToolRoute]]:
    """The naming rule (tools and prompts alike): what is listed, and shown name → owner."""
    offered = Counter(item["name"] for _, items in picked for item in items)
    listed: list[dict[str, Any]] = []
    routes: dict[str, ToolRoute] = {}
    for entry, items in picked:
        server = entry.config.name
        for item in items:
            name = item["name"]
            wanted = name if offered[name] == 1 else f"{server}{SEPARATOR}{name}"
            shown = fit_name(wanted)
            if shown in routes:
                shown = fit_name(wanted, salt=f"{server}\0{name}")
            routes[shown] = ToolRoute(server, name)
            if entry.up:
                listed.append(item if shown == name else {**item, "name": shown})
    return listed, routes


def uri_prefix(server: str, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """The server's name made fit for the start of a URI scheme (letters, digits, ``+ - .``)."""
    clean = re.sub(r"[^a-z0-9.-]", "-", server.lower())
    clean = clean if clean[:1].isalpha() else "s" + clean
    if clean in taken:
        clean += "-" + hashlib.sha256(server.encode()).hexdigest()[:6]
    return clean


def _uris(servers: Sequence[ServerTools]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], UriMap]:
    prefixes: dict[str, str] = {}
    prefix_of: dict[str, str] = {}
    for entry in servers:
        prefix_of[entry.config.name] = prefix = uri_prefix(entry.config.name, frozenset(prefixes))
        prefixes[prefix] = entry.config.name
    per_server = [(e, _unique(e.resources, "uri"), _unique(e.templates, "uriTemplate")) for e in servers]
    uri_count = Counter(r["uri"] for _, rs, _ in per_server for r in rs)
    template_count = Counter(t["uriTemplate"] for _, _, ts in per_server for t in ts)
    resources: list[dict[str, Any]] = []
    templates: list[dict[str, Any]] = []
    exact: dict[str, ToolRoute] = {}
    starts: list[tuple[str, str]] = []
    for entry, rs, ts in per_server:
        server = entry.config.name
        prefix = prefix_of[server] + "+"
        for resource in rs:
            uri = resource["uri"]
            shown = uri if uri_count[uri] == 1 else prefix + uri
            exact[shown] = ToolRoute(server, uri)
            if entry.up:
                resources.append(resource if shown == uri else {**resource, "uri": shown})
        for template in ts:
            pattern = template["uriTemplate"]
            if template_count[pattern] == 1:
                starts.append((pattern.split("{", 1)[0], server))
                shown = pattern
            else:
                shown = prefix + pattern
            if entry.up:
                templates.append(template if shown == pattern else {**template, "uriTemplate": shown})
    starts.sort(key=lambda s: -len(s[0]))
    # a URI no listing names goes to the one server offering resources, but only while every server's lists
    # are known: a server still connecting (or down) may be the one that offers it
    offering = tuple(e.config.name for e, rs, ts in per_server if rs or ts) if all(e.up for e in servers) else ()
    return resources, templates, UriMap(exact, prefixes, starts, offering)


def encode_cursor(offset: int, kind: str = "tools") -> str:
    return base64.urlsafe_b64encode(f"{kind}:{offset}".encode()).decode().rstrip("=")


def decode_cursor(cursor: Any, kind: str = "tools") -> int | None:
    """The offset in a cursor we issued for ``kind``, or None for anything else."""
    if not isinstance(cursor, str) or len(cursor) > 64:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    prefix, _, number = text.partition(":")
    if prefix != kind or not number.isdigit():
        return None
    return int(number)
