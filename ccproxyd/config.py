"""TOML → frozen dataclasses, validated once.

Every error found is collected and reported together as
``file: key.path: message``. Nothing after :func:`load_config` touches the raw
TOML dicts.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable

from .paths import GROUP_NAME, RESERVED_SEGMENTS
from .rules import covers

PROTOCOLS = ("openai", "claude", "gemini", "ollama", "responses")
UPSTREAM_PROTOCOLS = (*PROTOCOLS, "demo")  # demo: answered inside ccproxyd (protocols/demo.py)
DEMO_BASE_URL = "demo://ccproxyd"
KEY_ROLES = ("user", "admin")
STRATEGIES = ("round_robin", "weighted", "priority")
ALIAS_KINDS = ("chat", "embedding")
DEFAULT_LISTEN = "127.0.0.1:11435"


class ConfigError(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; 0 means none."""

    connect: float = 10
    first_byte: float = 120
    idle: float = 120
    total: float = 0


@dataclass(frozen=True, slots=True)
class Pacing:
    """Requests and tokens per minute an upstream is given before ccproxyd steers elsewhere; None: unpaced."""

    rpm: int | None = None
    tpm: int | None = None

    def __bool__(self) -> bool:
        return self.rpm is not None or self.tpm is not None


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    protocol: str
    base_url: str
    api_keys: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    params: tuple[tuple[str, Any], ...] = ()
    max_tokens: int | None = None
    stream_usage: bool = True
    tool_choice: bool = True
    tool_mode: str = "native"  # native | compat
    vision: bool = False
    proxy: str | None = None
    verify_tls: bool = True
    timeouts: Timeouts = Timeouts()
    pacing: Pacing = Pacing()
    discover: bool = False  # list the upstream's own models under the pattern aliases that target it


@dataclass(frozen=True, slots=True)
class Target:
    provider: str
    model: str
    weight: int = 1
    pacing: Pacing = Pacing()

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True, slots=True)
class Alias:
    name: str
    targets: tuple[Target, ...]
    strategy: str | None = None  # None: the group's
    is_pattern: bool = False
    kind: str = "chat"  # chat | embedding: what model lists and /api/show report


@dataclass(frozen=True, slots=True)
class When:
    """A routing rule's conditions (None: not asked); all that are given must hold. See rules.py."""

    model: tuple[str, ...] | None = None  # patterns on the requested model name
    thinking: bool | None = None
    context_tokens_over: int | None = None
    images: bool | None = None
    tools_include: tuple[str, ...] | None = None  # patterns on offered tool names
    protocol: tuple[str, ...] | None = None  # the client's
    stream: bool | None = None


@dataclass(frozen=True, slots=True)
class RouteRule:
    number: int  # 1 for the group's first rule: what x-ccproxy-route, the log and the stats show
    use: str  # the alias to use instead of the requested one
    when: When

    @property
    def label(self) -> str:
        return f"{self.number}:{self.use}"


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    aliases: tuple[Alias, ...] = ()
    strategy: str = "round_robin"
    max_attempts: int = 3
    prompt_injection: str = "off"  # off | enhance | replace
    prompt_text: str = ""
    prompt_position: str = "system"  # system | user
    inject_for: tuple[str, ...] = ()
    tool_filter: tuple[str, ...] = ()
    temperature_ratio: float | None = None
    tool_mode: str = "auto"  # auto | compat | native
    routes: tuple[RouteRule, ...] = ()  # evaluated in order before alias resolution


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """What one access key may use; None: no limit. Token limits count input + output tokens."""

    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    budget_usd_per_month: float | None = None

    def __bool__(self) -> bool:
        return any(getattr(self, f) is not None for f in self.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class AccessKey:
    name: str
    key: str
    groups: tuple[str, ...] = ()  # empty: every group
    role: str = "user"  # admin: may also use the status page and /admin/*
    limits: KeyLimits = KeyLimits()


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens for the targets or aliases matching ``pattern`` (fnmatch)."""

    pattern: str
    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None  # None: priced as input


@dataclass(frozen=True, slots=True)
class SharedState:
    """Where routing state and limit counters live: this process ("local") or a Redis URL."""

    backend: str = "local"
    on_state_error: str = "open"  # open | closed: whether limits admit requests while Redis is unreachable
    queue_seconds: float = 0  # how long a request may wait for a paced target before 429
    prefix: str = "ccproxyd"

    @property
    def is_redis(self) -> bool:
        return self.backend != "local"


@dataclass(frozen=True, slots=True)
class Stats:
    url: str | None = None  # postgresql://...: usage rows go to PostgreSQL instead of SQLite


@dataclass(frozen=True, slots=True)
class McpServer:
    name: str
    command: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    url: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    tools: tuple[str, ...] = ()  # allowlist patterns; empty: all
    exclude: tuple[str, ...] = ()
    connect: str = "lazy"  # lazy | eager


@dataclass(frozen=True, slots=True)
class Mcp:
    servers: tuple[McpServer, ...] = ()
    tool_timeout: float = 60


@dataclass(frozen=True, slots=True)
class Server:
    listen: str = DEFAULT_LISTEN
    active_group: str = "default"
    keyless_loopback: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 32 * 1024 * 1024
    max_json_depth: int = 64
    workers: int = 1
    shutdown_grace: float = 30
    log_format: str = "text"  # text | json
    log_level: str = "info"
    log_bodies: bool = False
    log_bodies_path: str | None = None
    metrics_public: bool = False
    state_dir: str | None = None
    stats: bool = True
    stats_retention_days: int = 90
    conversation_store: bool = True  # keep stored responses (Responses API store / previous_response_id)
    conversation_ttl_hours: float = 24
    conversation_max_mb: int = 256
    tls_cert: str | None = None
    tls_key: str | None = None
    auth_failures_per_minute: int = 30
    cooldown_max: float = 300
    default_max_tokens: int = 8192
    image_fetch_max_bytes: int = 20 * 1024 * 1024
    image_fetch_timeout: float = 15
    image_fetch_allow_private: bool = False
    ollama_version: str = ""  # what /api/version reports; empty: the Ollama adapter's default
    discovery_ttl: float = 600  # seconds an upstream's discovered model list is used before it is fetched again
    image_fetch_max_total_bytes: int = 32 * 1024 * 1024  # per request, all its images together
    image_fetch_concurrency: int = 4  # image downloads at once, across the process
    keepalive_timeout: float = 75  # an idle keep-alive connection is closed after this
    request_header_timeout: float = 10  # from a request's first byte to the end of its head; 0: none
    request_body_timeout: float = 60  # from the end of the head to the end of the body; 0: none
    max_connections: int = 0  # 0: from the process's file limit (connections.default_max_connections)
    auth_lockout_exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")  # networks never locked out after wrong keys

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    server: Server = Server()
    keys: tuple[AccessKey, ...] = ()
    providers: dict[str, Provider] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    mcp: Mcp = Mcp()
    prices: tuple[Price, ...] = ()
    state: SharedState = SharedState()
    stats: Stats = Stats()

    def __hash__(self) -> int:  # dict fields make the generated hash unusable
        return id(self)


# ---------------------------------------------------------------- loading


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Reader:
    """Walks the raw TOML once, collecting every error with its key path."""

    def __init__(self, path: str, env: dict[str, str]) -> None:
        self.path = path
        self.env = env
        self.errors: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{self.path}: {where}: {message}")

    def expand(self, where: str, value: Any) -> Any:
        if isinstance(value, str):

            def sub(m: re.Match[str]) -> str:
                name, default = m.group(1), m.group(2)
                if name in self.env:
                    return self.env[name]
                if default is not None:
                    return default
                self.error(where, f"environment variable {name} is not set")
                return ""

            return _ENV.sub(sub, value)
        if isinstance(value, list):
            return [self.expand(f"{where}[{i}]", v) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.expand(f"{where}.{k}" if where else k, v) for k, v in value.items()}
        return value

    def table(self, where: str, raw: Any, allowed: set[str]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.error(where, "expected a table")
            return {}
        for key in raw:
            if key not in allowed:
                self.error(f"{where}.{key}" if where else key, "unknown key")
        return raw

    def get(self, where: str, raw: dict, key: str, kind: type | tuple, default: Any, check: Callable[[Any], str | None] | None = None) -> Any:
        if key not in raw:
            return default
        value = raw[key]
        at = f"{where}.{key}" if where else key
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            self.error(at, f"expected {_kind_name(kinds)}, got a boolean")
            return default
        if not isinstance(value, kinds):
            self.error(at, f"expected {_kind_name(kinds)}, got {type(value).__name__}")
            return default
        if float in kinds and isinstance(value, int):
            value = float(value)
        if check:
            problem = check(value)
            if problem:
                self.error(at, problem)
                return default
        return value

    def strings(self, where: str, raw: dict, key: str) -> tuple[str, ...]:
        values = self.get(where, raw, key, list, [])
        if not all(isinstance(v, str) for v in values):
            self.error(f"{where}.{key}", "expected a list of strings")
            return ()
        return tuple(values)

    def string_map(self, where: str, raw: dict, key: str) -> tuple[tuple[str, str], ...]:
        values = self.get(where, raw, key, dict, {})
        bad = [k for k, v in values.items() if not isinstance(v, str)]
        if bad:
            self.error(f"{where}.{key}.{bad[0]}", "expected a string")
            return ()
        return tuple(values.items())


def _kind_name(kinds: tuple) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _one_of(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else f"must be one of {', '.join(options)}; got {v!r}"


def _at_least(minimum: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= minimum else f"must be at least {minimum}"


def _listen(value: str) -> str | None:
    try:
        split_listen(value)
    except ValueError as e:
        return str(e)
    return None


def _url(value: str) -> str | None:
    return None if re.match(r"^https?://[^/\s]+", value) else f"expected an http(s) URL, got {value!r}"


_SERVER_KEYS = {f for f in Server.__dataclass_fields__}
_PROVIDER_KEYS = ({f for f in Provider.__dataclass_fields__} - {"name", "pacing"}) | {"rpm", "tpm"}
_LIMIT_KEYS = set(KeyLimits.__dataclass_fields__)
_STATE_KEYS = set(SharedState.__dataclass_fields__)
_GROUP_KEYS = ({f for f in Group.__dataclass_fields__} - {"name", "aliases"}) | {"models"}
_MCP_SERVER_KEYS = {f for f in McpServer.__dataclass_fields__} - {"name"}


def _read_server(r: _Reader, raw: Any) -> Server:
    t = r.table("server", raw, _SERVER_KEYS)
    d = Server()
    g = lambda key, kind, check=None: r.get("server", t, key, kind, getattr(d, key), check)  # noqa: E731
    keyless = r.strings("server", t, "keyless_loopback")
    for p in keyless:
        if p not in PROTOCOLS:
            r.error("server.keyless_loopback", f"unknown protocol {p!r}; expected one of {', '.join(PROTOCOLS)}")
    tls_cert, tls_key = g("tls_cert", str), g("tls_key", str)
    if (tls_cert is None) != (tls_key is None):
        r.error("server", "tls_cert and tls_key must be given together")
    return Server(
        listen=g("listen", str, _listen),
        active_group=g("active_group", str),
        keyless_loopback=keyless,
        cors_origins=r.strings("server", t, "cors_origins"),
        max_body_bytes=g("max_body_bytes", int, _at_least(1024)),
        max_json_depth=g("max_json_depth", int, lambda v: None if 8 <= v <= 200 else "must be between 8 and 200 (deeper JSON cannot be re-encoded)"),
        workers=g("workers", int, _at_least(0)),
        shutdown_grace=g("shutdown_grace", (int, float), _at_least(0)),
        log_format=g("log_format", str, _one_of(("text", "json"))),
        log_level=g("log_level", str, _one_of(("debug", "info", "warning", "error"))),
        log_bodies=g("log_bodies", bool),
        log_bodies_path=g("log_bodies_path", str),
        metrics_public=g("metrics_public", bool),
        state_dir=g("state_dir", str),
        stats=g("stats", bool),
        stats_retention_days=g("stats_retention_days", int, _at_least(1)),
        conversation_store=g("conversation_store", bool),
        conversation_ttl_hours=g("conversation_ttl_hours", (int, float), _at_least(0.01)),
        conversation_max_mb=g("conversation_max_mb", int, _at_least(1)),
        tls_cert=tls_cert,
        tls_key=tls_key,
        auth_failures_per_minute=g("auth_failures_per_minute", int, _at_least(1)),
        cooldown_max=g("cooldown_max", (int, float), _at_least(1)),
        default_max_tokens=g("default_max_tokens", int, _at_least(1)),
        image_fetch_max_bytes=g("image_fetch_max_bytes", int, _at_least(1)),
        image_fetch_timeout=g("image_fetch_timeout", (int, float), _at_least(0.1)),
        image_fetch_allow_private=g("image_fetch_allow_private", bool),
        discovery_ttl=g("discovery_ttl", (int, float), _at_least(1)),
        ollama_version=g("ollama_version", str, lambda v: None if re.match(r"^\d+\.\d+\.\d+", v) else f"expected a version like 0.13.5, got {v!r}"),
        image_fetch_max_total_bytes=g("image_fetch_max_total_bytes", int, _at_least(1)),
        image_fetch_concurrency=g("image_fetch_concurrency", int, _at_least(1)),
        keepalive_timeout=g("keepalive_timeout", (int, float), _at_least(1)),
        request_header_timeout=g("request_header_timeout", (int, float), _at_least(0)),
        request_body_timeout=g("request_body_timeout", (int, float), _at_least(0)),
        max_connections=g("max_connections", int, _at_least(0)),
        auth_lockout_exempt=_networks(r, t, "auth_lockout_exempt", d.auth_lockout_exempt),
    )


def _networks(r: _Reader, t: dict, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A list of networks (``10.0.0.0/8``) or single addresses, each checked."""
    if key not in t:
        return default
    values = r.strings("server", t, key)
    for i, value in enumerate(values):
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            r.error(f"server.{key}[{i}]", f"expected a network like 10.0.0.0/8 or an address, got {value!r}")
    return values


def _read_keys(r: _Reader, raw: Any) -> tuple[AccessKey, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.error("keys", "expected an array of tables ([[keys]])")
        return ()
    keys = []
    for i, item in enumerate(raw):
        where = f"keys[{i}]"
        t = r.table(where, item, {"name", "key", "groups", "role"} | _LIMIT_KEYS)
        name = r.get(where, t, "name", str, f"key{i + 1}")
        key = r.get(where, t, "key", str, "")
        if not key:
            r.error(where, "key is missing or empty")
            continue
        keys.append(AccessKey(name, key, r.strings(where, t, "groups"), role=r.get(where, t, "role", str, "user", _one_of(KEY_ROLES)),
                              limits=_read_key_limits(r, where, t)))
    return tuple(keys)


def _read_key_limits(r: _Reader, where: str, t: dict[str, Any]) -> KeyLimits:
    ints = {f: r.get(where, t, f, int, None, _at_least(1)) for f in _LIMIT_KEYS if f != "budget_usd_per_month"}
    return KeyLimits(**ints, budget_usd_per_month=r.get(where, t, "budget_usd_per_month", (int, float), None, _at_least(0)))


def _read_pacing(r: _Reader, where: str, t: dict[str, Any]) -> Pacing:
    return Pacing(r.get(where, t, "rpm", int, None, _at_least(1)), r.get(where, t, "tpm", int, None, _at_least(1)))


def _read_prices(r: _Reader, raw: Any) -> tuple[Price, ...]:
    prices = []
    for pattern, value in r.table("prices", raw, set(raw) if isinstance(raw, dict) else set()).items():
        where = f"prices.{pattern}"
        t = r.table(where, value, {"input", "output", "cached_input"})
        g = lambda key, default: r.get(where, t, key, (int, float), default, _at_least(0))  # noqa: E731
        prices.append(Price(pattern, g("input", 0.0), g("output", 0.0), g("cached_input", None)))
    return tuple(prices)


def _redis_url(value: str) -> str | None:
    if value == "local" or value.startswith(("redis://", "rediss://", "unix://")):
        return None
    return 'expected "local" or a redis://, rediss:// or unix:// URL'


def _read_state(r: _Reader, raw: Any) -> SharedState:
    t = r.table("state", raw, _STATE_KEYS)
    d = SharedState()
    return SharedState(
        backend=r.get("state", t, "backend", str, d.backend, _redis_url),
        on_state_error=r.get("state", t, "on_state_error", str, d.on_state_error, _one_of(("open", "closed"))),
        queue_seconds=r.get("state", t, "queue_seconds", (int, float), d.queue_seconds, _at_least(0)),
        prefix=r.get("state", t, "prefix", str, d.prefix),
    )


def _read_stats(r: _Reader, raw: Any) -> Stats:
    t = r.table("stats", raw, {"url"})
    check = lambda v: None if v.startswith(("postgresql://", "postgres://")) else "expected a postgresql:// URL"  # noqa: E731
    return Stats(r.get("stats", t, "url", str, None, check))


def _read_timeouts(r: _Reader, where: str, raw: Any) -> Timeouts:
    t = r.table(where, raw, set(Timeouts.__dataclass_fields__))
    d = Timeouts()
    return Timeouts(**{k: r.get(where, t, k, (int, float), getattr(d, k), _at_least(0)) for k in Timeouts.__dataclass_fields__})


def normalize_base_url(protocol: str, url: str) -> str:
    """Strip what each SDK's convention lets users add: a trailing slash, Claude's /v1, Gemini's /v1beta."""
    url = url.rstrip("/")
    suffix = {"claude": "/v1", "gemini": "/v1beta", "ollama": "/api"}.get(protocol)
    if suffix and url.endswith(suffix):
        url = url[: -len(suffix)]
    return url


def _read_provider(r: _Reader, name: str, raw: Any) -> Provider | None:
    where = f"providers.{name}"
    t = r.table(where, raw, _PROVIDER_KEYS)
    d = Provider(name, "openai", "")
    g = lambda key, kind, check=None: r.get(where, t, key, kind, getattr(d, key), check)  # noqa: E731
    if "protocol" not in t:
        r.error(where, f"protocol is missing; expected one of {', '.join(UPSTREAM_PROTOCOLS)}")
    protocol = g("protocol", str, _one_of(UPSTREAM_PROTOCOLS))
    if "base_url" not in t and protocol != "demo":
        r.error(where, "base_url is missing")
    base_url = DEMO_BASE_URL if protocol == "demo" else g("base_url", str, _url)
    params = r.get(where, t, "params", dict, {})
    max_tokens = g("max_tokens", int, _at_least(1))
    proxy = g("proxy", str, _url)
    return Provider(
        name=name,
        protocol=protocol,
        base_url=normalize_base_url(protocol, base_url),
        api_keys=tuple(k for k in r.strings(where, t, "api_keys") if k),
        headers=r.string_map(where, t, "headers"),
        params=tuple(params.items()),
        max_tokens=max_tokens,
        stream_usage=g("stream_usage", bool),
        tool_choice=g("tool_choice", bool),
        tool_mode=g("tool_mode", str, _one_of(("native", "compat"))),
        vision=g("vision", bool),
        proxy=proxy,
        verify_tls=g("verify_tls", bool),
        timeouts=_read_timeouts(r, f"{where}.timeouts", t.get("timeouts")),
        pacing=_read_pacing(r, where, t),
        discover=g("discover", bool),
    )


def parse_target(text: str) -> tuple[str, str] | None:
    provider, sep, model = text.partition("/")
    return (provider, model) if sep and provider and model else None


def _read_targets(r: _Reader, where: str, raw: Any, providers: dict[str, Any]) -> tuple[Target, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        r.error(where, "expected a non-empty list of \"provider/model\" targets")
        return ()
    targets = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        weight, pacing = 1, Pacing()
        if isinstance(item, dict):
            t = r.table(at, item, {"target", "weight", "rpm", "tpm"})
            weight = r.get(at, t, "weight", int, 1, _at_least(1))
            pacing = _read_pacing(r, at, t)
            item = t.get("target")
        if not isinstance(item, str) or not parse_target(item):
            r.error(at, f"expected \"provider/model\", got {item!r}")
            continue
        provider, model = parse_target(item)  # type: ignore[misc]
        if provider not in providers:
            known = ", ".join(sorted(providers)) or "none defined"
            r.error(at, f"provider {provider!r} does not exist (providers: {known})")
            continue
        targets.append(Target(provider, model, weight, pacing))
    return tuple(targets)


def _read_group(r: _Reader, name: str, raw: Any, providers: dict[str, Any]) -> Group:
    where = f"groups.{name}"
    if name in RESERVED_SEGMENTS or name == "switch" or not GROUP_NAME.match(name):
        r.error(where, f"group name {name!r} is reserved or not a valid path segment")
    t = r.table(where, raw, _GROUP_KEYS)
    d = Group(name)
    g = lambda key, kind, check=None: r.get(where, t, key, kind, getattr(d, key), check)  # noqa: E731
    aliases = []
    models = r.get(where, t, "models", dict, {})
    for alias, value in models.items():
        at = f"{where}.models.{alias}"
        strategy, kind = None, "chat"
        if isinstance(value, dict):
            vt = r.table(at, value, {"targets", "strategy", "kind"})
            strategy = r.get(at, vt, "strategy", str, None, _one_of(STRATEGIES))
            kind = r.get(at, vt, "kind", str, "chat", _one_of(ALIAS_KINDS))
            value = vt.get("targets")
        targets = _read_targets(r, at, value, providers)
        aliases.append(Alias(alias, targets, strategy, any(c in alias for c in "*?["), kind))
    ratio = g("temperature_ratio", (int, float), _at_least(0))
    return Group(
        name=name,
        aliases=tuple(aliases),
        strategy=g("strategy", str, _one_of(STRATEGIES)),
        max_attempts=g("max_attempts", int, _at_least(1)),
        prompt_injection=g("prompt_injection", str, _one_of(("off", "enhance", "replace"))),
        prompt_text=g("prompt_text", str),
        prompt_position=g("prompt_position", str, _one_of(("system", "user"))),
        inject_for=r.strings(where, t, "inject_for"),
        tool_filter=r.strings(where, t, "tool_filter"),
        temperature_ratio=ratio,
        tool_mode=g("tool_mode", str, _one_of(("auto", "compat", "native"))),
        routes=_read_routes(r, where, t.get("routes"), name, tuple(aliases)),
    )


def _read_routes(r: _Reader, where: str, raw: Any, group: str, aliases: tuple[Alias, ...]) -> tuple[RouteRule, ...]:
    """``[[groups.NAME.routes]]``: ``when`` (conditions) and ``use`` (an alias of this group), in order."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.error(f"{where}.routes", "expected an array of tables ([[groups.NAME.routes]])")
        return ()
    rules: list[RouteRule] = []
    for i, item in enumerate(raw):
        at = f"{where}.routes[{i}]"
        t = r.table(at, item, {"when", "use"})
        if "when" not in t:
            r.error(at, "when is missing (write when = {} for a rule that always matches)")
        if "use" not in t:
            r.error(at, "use is missing: the alias this rule picks")
        use = r.get(at, t, "use", str, "")
        if use and not any(fnmatch.fnmatchcase(use, a.name) if a.is_pattern else a.name == use for a in aliases):
            listed = ", ".join(a.name for a in aliases) or "none"
            r.error(f"{at}.use", f"alias {use!r} does not exist in group {group!r} (aliases: {listed})")
        when = _read_when(r, f"{at}.when", t.get("when"))
        if when is None or not use:
            continue
        rule = RouteRule(i + 1, use, when)
        earlier = next((e for e in rules if covers(e.when, when)), None)
        if earlier is not None:
            r.error(at, f"can never match: rule {earlier.number} (routes[{earlier.number - 1}]) comes first and matches every request this rule matches")
        rules.append(rule)
    return tuple(rules)


def _read_when(r: _Reader, at: str, raw: Any) -> When | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        r.error(at, 'expected a table of conditions, e.g. { model = "claude-*haiku*" }')
        return None
    t, ok = raw, True
    for key in t:
        if key not in When.__dataclass_fields__:
            r.error(f"{at}.{key}", f"unknown condition; expected one of {', '.join(When.__dataclass_fields__)}")
            ok = False
    errors = len(r.errors)

    def patterns(key: str) -> tuple[str, ...] | None:
        value = t.get(key)
        if value is None:
            return None
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
            r.error(f"{at}.{key}", "expected a pattern or a non-empty list of patterns")
            return None
        return tuple(values)

    protocol = patterns("protocol")
    for p in protocol or ():
        if p not in PROTOCOLS:
            r.error(f"{at}.protocol", f"unknown protocol {p!r}; expected one of {', '.join(PROTOCOLS)}")
    when = When(
        model=patterns("model"),
        thinking=r.get(at, t, "thinking", bool, None),
        context_tokens_over=r.get(at, t, "context_tokens_over", int, None, _at_least(0)),
        images=r.get(at, t, "images", bool, None),
        tools_include=patterns("tools_include"),
        protocol=protocol,
        stream=r.get(at, t, "stream", bool, None),
    )
    return when if ok and len(r.errors) == errors else None


def _read_mcp(r: _Reader, raw: Any) -> Mcp:
    t = r.table("mcp", raw, {"servers", "tool_timeout"})
    servers = []
    for name, value in r.get("mcp", t, "servers", dict, {}).items():
        where = f"mcp.servers.{name}"
        s = r.table(where, value, _MCP_SERVER_KEYS)
        command = r.strings(where, s, "command")
        url = r.get(where, s, "url", str, None, _url)
        if bool(command) == bool(url):
            r.error(where, "give exactly one of command (a stdio server) or url (an HTTP server)")
        servers.append(
            McpServer(
                name=name,
                command=command,
                env=r.string_map(where, s, "env"),
                cwd=r.get(where, s, "cwd", str, None),
                url=url,
                headers=r.string_map(where, s, "headers"),
                tools=r.strings(where, s, "tools"),
                exclude=r.strings(where, s, "exclude"),
                connect=r.get(where, s, "connect", str, "lazy", _one_of(("lazy", "eager"))),
            )
        )
    return Mcp(tuple(servers), r.get("mcp", t, "tool_timeout", (int, float), 60.0, _at_least(0.1)))


def parse_config(data: dict[str, Any], path: str = "<config>", env: dict[str, str] | None = None) -> Config:
    r = _Reader(path, dict(os.environ) if env is None else env)
    data = r.expand("", data)
    top = r.table("", data, {"server", "keys", "providers", "groups", "mcp", "prices", "state", "stats"})
    server = _read_server(r, top.get("server"))
    keys = _read_keys(r, top.get("keys"))
    raw_providers = r.get("", top, "providers", dict, {})
    providers = {}
    for name, value in raw_providers.items():
        provider = _read_provider(r, name, value)
        if provider:
            providers[name] = provider
    groups = {name: _read_group(r, name, value, raw_providers) for name, value in r.get("", top, "groups", dict, {}).items()}
    for i, k in enumerate(keys):
        for grp in k.groups:
            if grp not in groups:
                r.error(f"keys[{i}].groups", f"group {grp!r} does not exist")
    if not keys and not r.errors and not is_loopback(server.host):
        r.error("server.listen", f"{server.listen} is not a loopback address; define [[keys]] before listening on the network")
    if "active_group" in (top.get("server") or {}) and server.active_group not in groups:
        r.error("server.active_group", f"group {server.active_group!r} does not exist")
    config = Config(
        path, server, keys, providers, groups, _read_mcp(r, top.get("mcp")),
        prices=_read_prices(r, top.get("prices")), state=_read_state(r, top.get("state")), stats=_read_stats(r, top.get("stats")),
    )
    if r.errors:
        raise ConfigError(r.errors)
    return config


def load_config(path: str, env: dict[str, str] | None = None) -> Config:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: not valid TOML: {e}"]) from None
    return parse_config(data, path, env)
