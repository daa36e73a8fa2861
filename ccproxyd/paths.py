"""The path parser: URL path → Route. Pure, no I/O.

Every chat path works bare, under ``/{group}/``, under ``/compat_mode/`` (or
``/compat/``) and under ``/{group}/compat_mode/``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Mapping

RESERVED_SEGMENTS = frozenset(
    {"v1", "v1beta", "api", "compat_mode", "compat", "sse", "mcp", "healthz", "metrics", "ui", "admin"}
)
GROUP_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Route:
    protocol: str | None  # openai | responses | claude | gemini | ollama | None (service endpoints)
    action: str  # chat | models | count_tokens | show | version | stored | root | health | metrics | mcp_sse | mcp_http | ui | ui_asset | admin_read | admin
    # | embed | embed_batch | embed_legacy | generate | complete | ps | pull | model_store
    group: str | None = None
    compat: bool = False
    model: str | None = None  # from the path (Gemini)
    stream: bool | None = None  # from the path (Gemini)
    gemini_sse: bool = False  # ?alt=sse on streamGenerateContent
    item: str | None = None  # the stored object named in the path (GET/DELETE /v1/responses/{id})


# (method set, regex of the rest of the path, protocol, action)
_ENDPOINTS: list[tuple[frozenset[str], str, str, str]] = [
    (frozenset({"POST"}), r"v1/chat/completions", "openai", "chat"),
    (frozenset({"GET"}), r"v1/models", "openai", "models"),
    (frozenset({"POST"}), r"v1/responses", "responses", "chat"),
    (frozenset({"POST"}), r"v1/responses/input_tokens", "responses", "count_tokens"),
    (frozenset({"GET", "DELETE"}), r"v1/responses/(?P<item>[A-Za-z0-9_.\-]{1,200})", "responses", "stored"),
    (frozenset({"POST"}), r"v1/messages", "claude", "chat"),
    (frozenset({"POST"}), r"v1/messages/count_tokens", "claude", "count_tokens"),
    (frozenset({"GET"}), r"v1beta/models", "gemini", "models"),
    (frozenset({"POST"}), r"v1beta/models/(?P<model>[^/:]+(?:/[^/:]+)*?)[:/](?P<method>generateContent|streamGenerateContent|countTokens|embedContent|batchEmbedContents)", "gemini", "chat"),
    # google-genai 3.x defaults to api_version "v1"
    (frozenset({"POST"}), r"v1/models/(?P<model>[^/:]+(?:/[^/:]+)*?):(?P<method>generateContent|streamGenerateContent|countTokens|embedContent|batchEmbedContents)", "gemini", "chat"),
    (frozenset({"POST"}), r"api/chat", "ollama", "chat"),
    (frozenset({"GET"}), r"api/tags", "ollama", "models"),
    (frozenset({"POST"}), r"api/show", "ollama", "show"),
    (frozenset({"GET"}), r"api/version", "ollama", "version"),
    # embeddings, legacy completions and the rest of the Ollama API (issue 14)
    (frozenset({"POST"}), r"v1/embeddings", "openai", "embed"),
    (frozenset({"POST"}), r"v1/completions", "openai", "complete"),
    (frozenset({"POST"}), r"api/embed", "ollama", "embed"),
    (frozenset({"POST"}), r"api/embeddings", "ollama", "embed_legacy"),
    (frozenset({"POST"}), r"api/generate", "ollama", "generate"),
    (frozenset({"GET"}), r"api/ps", "ollama", "ps"),
    (frozenset({"POST"}), r"api/pull", "ollama", "pull"),
    (frozenset({"GET", "POST", "DELETE"}), r"api/(?:copy|delete|create|push|blobs/[^/]+)", "ollama", "model_store"),
]
_PREFIX = (
    r"^/(?:(?P<group>(?!(?:" + "|".join(sorted(RESERVED_SEGMENTS)) + r")/)[^/]+)/)?"
    r"(?:(?P<compat>compat_mode|compat)/)?"
)
_COMPILED = [
    (methods, re.compile(_PREFIX + rest + r"/?$"), protocol, action) for methods, rest, protocol, action in _ENDPOINTS
]
_GEMINI_EMBED = {"embedContent": "embed", "batchEmbedContents": "embed_batch"}
_SERVICE = {
    "/": "root",
    "/healthz": "health",
    "/metrics": "metrics",
}
_MCP = re.compile(r"^/(?P<kind>sse|mcp)(?:/.*)?$")
# the status page and its admin API (admin.py): action by path, and the methods each takes
_ADMIN: dict[str, tuple[str, frozenset[str]]] = {
    "/ui": ("ui", frozenset({"GET"})),
    "/ui/": ("ui", frozenset({"GET"})),
    "/admin/status": ("admin_read", frozenset({"GET"})),
    "/admin/usage": ("admin_read", frozenset({"GET"})),
    "/admin/active-group": ("admin", frozenset({"PUT"})),
    "/admin/reload": ("admin", frozenset({"POST"})),
}
_PROTOCOL_HINT = [
    (re.compile(r"/v1beta(/|$)|/v1/models/[^/]+:"), "gemini"),
    (re.compile(r"/api(/|$)"), "ollama"),
    (re.compile(r"/v1/messages"), "claude"),
]


class PathNotFound(Exception):
    def __init__(self, protocol: str) -> None:
        super().__init__(protocol)
        self.protocol = protocol


class MethodNotAllowed(PathNotFound):
    pass


def guess_protocol(path: str) -> str:
    """The protocol a path looks like, for shaping a 404 the client can parse."""
    for pattern, protocol in _PROTOCOL_HINT:
        if pattern.search(path):
            return protocol
    return "openai"


def client_hint(headers: "Mapping[str, str]") -> str | None:
    """The protocol a request's headers betray: each official SDK sends its own."""
    if "anthropic-version" in headers:
        return "claude"
    if "x-goog-api-key" in headers:
        return "gemini"
    return None


def parse_path(method: str, path: str, query: Mapping[str, str] | None = None, hint: str | None = None) -> Route:
    """Map a request line to a Route, or raise PathNotFound / MethodNotAllowed.

    ``GET /v1/models`` is shared by the OpenAI, Anthropic and (v1) Gemini SDKs;
    ``hint`` (see :func:`client_hint`) picks the protocol whose shape it answers in.
    Of the query only ``alt`` counts (Gemini's ``?alt=sse``).
    """
    return _parse(method, path, query.get("alt") if query else None, hint)


@functools.lru_cache(maxsize=256)
def _parse(method: str, path: str, alt: str | None, hint: str | None) -> Route:
    """:func:`parse_path`, remembered: clients send the same few paths again and again, and a Route is
    immutable. Only answers are cached (a refused path raises); 256 paths of at most aiohttp's 8 KB
    request line bound the memory."""
    method = "GET" if method == "HEAD" else method
    if path in _SERVICE:
        return Route(None, _SERVICE[path])
    if path in _ADMIN or path.startswith("/ui/"):
        action, methods = _ADMIN.get(path, ("ui_asset", frozenset({"GET"})))
        if method not in methods and method != "OPTIONS":
            raise MethodNotAllowed("openai")
        return Route(None, action)
    m = _MCP.match(path)
    if m:
        return Route(None, "mcp_sse" if m["kind"] == "sse" else "mcp_http")
    wrong_method = False
    for methods, pattern, protocol, action in _COMPILED:
        m = pattern.match(path)
        if not m:
            continue
        group = m["group"]
        if group is not None and (group in RESERVED_SEGMENTS or not GROUP_NAME.match(group)):
            continue
        if method not in methods and method != "OPTIONS":  # a CORS preflight may ask about any endpoint
            wrong_method = True
            continue
        if protocol == "gemini" and action == "chat":
            gmethod = m["method"]
            if gmethod == "countTokens":
                action = "count_tokens"
            elif gmethod in _GEMINI_EMBED:
                action = _GEMINI_EMBED[gmethod]
            stream = gmethod == "streamGenerateContent"
            return Route(
                protocol,
                action,
                group,
                m["compat"] is not None,
                model=m["model"],
                stream=stream,
                gemini_sse=stream and alt == "sse",
            )
        if hint and (protocol, action) == ("openai", "models"):
            protocol = hint
        return Route(protocol, action, group, m["compat"] is not None, item=m.groupdict().get("item"))
    if wrong_method:
        raise MethodNotAllowed(guess_protocol(path))
    raise PathNotFound(guess_protocol(path))
