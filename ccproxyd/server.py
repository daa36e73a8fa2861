"""The aiohttp application: one catch-all route, its request pipeline, and the app's lifecycle.

:func:`serve` takes every request through, in order: request id and record,
the route (:func:`~ccproxyd.paths.parse_path`), the access key, the key's
limits, then :func:`handle`, which dispatches on the route's action; any
failure becomes the client protocol's error shape.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import logging
import math
import os
import re
import sqlite3
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import quote

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from . import __version__, admin, admin_status, ollama_api
from .config import AccessKey, Config, ConfigError, is_loopback, load_config
from .conversations import ConversationStore
from .conversations_redis import RedisConversationStore
from .dispatch import CLIENT_HEADERS, Dispatcher
from .embeddings import EMBED_ACTIONS, embed
from .errors import AuthError, NotFound, ProxyError, RateLimited
from .ir import random_hex
from .keyview import GroupView
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics
from .observe import BodyLogs, Observer, RequestRecord, TappedUpstream, redact_secrets
from .paths import MethodNotAllowed, PathNotFound, Route, client_hint, parse_path
from .protocols import ADAPTERS
from .recent import RecentRequests
from .routing import Router
from .limits import KeyLimiter, Lease, Pacer
from .service import read_status
from .state import LocalState, RedisState, open_state, safe_url, scope_from_wire, scope_to_wire
from .stats import StatsWriter, db_path
from .upstream import UpstreamClient

log = logging.getLogger("ccproxyd")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_OPEN_ACTIONS = frozenset({"root", "health", "ui_asset"})
_UNLOGGED = frozenset({"ui", "admin_read"})  # the status page polls these every second
_NOT_OBSERVED = _OPEN_ACTIONS | _UNLOGGED  # built once, not per request


class MethodNotAllowedError(ProxyError):
    status, kind = 405, "invalid_request"


@dataclass(repr=False)  # bound into the route's handler: a repr would print the config, keys included
class AppState:
    """Everything a request needs; ``config`` is swapped whole on reload."""

    config: Config
    router: Router = field(default_factory=Router)
    upstream: UpstreamClient = field(default_factory=UpstreamClient)
    observer: Observer = field(default_factory=Observer)
    mcp: Any = None
    auth_failures: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))
    started: float = field(default_factory=time.time)
    dispatcher: Dispatcher = field(init=False)
    metrics: Metrics | None = None
    stats: Any = None  # StatsWriter (SQLite) or stats_pg.PgStatsWriter
    bodies: BodyLogs = field(default_factory=BodyLogs)
    worker_index: int | None = None  # set in a worker process of a supervisor (server.workers > 1)
    runtime_dir: str | None = None  # the supervisor's shared directory (status, metrics snapshots)
    draining: bool = False  # SIGTERM received: finishing in-flight requests, accepting no new connections
    last_reload: dict[str, Any] | None = None  # time, ok, error of the last SIGHUP, for /healthz

    tasks: set[asyncio.Task] = field(default_factory=set)  # fire-and-forget work, kept referenced until done
    shared: LocalState | RedisState = field(default_factory=LocalState)  # limit counters, shared cooldowns
    limiter: KeyLimiter = field(init=False)
    recent: RecentRequests = field(init=False)  # for the status page: reads ``requests``, keeps the last finished
    reload: Callable[[], Any] = lambda: None  # what SIGHUP does (set by create_app, refined by the cli)
    # the requests in flight, each one's task (drain.py waits for and cancels them) with its record (the status page)
    requests: dict[asyncio.Task, RequestRecord] = field(default_factory=dict)
    connections: Any = None  # the connections.Guard of the running server (its counts are in /metrics)

    def __post_init__(self) -> None:
        self.dispatcher = Dispatcher(self.router, self.upstream, lambda: self.bodies.current(self.config), Pacer(self.shared))
        self.limiter = KeyLimiter(self.shared)
        self.recent = RecentRequests(self.requests)

    @property
    def in_flight(self) -> int:
        return len(self.requests)

    def background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


STATE = web.AppKey("ccproxyd_state", AppState)
RECORD = web.RequestKey("ccproxyd_record", RequestRecord)
ACCESS_KEY = web.RequestKey("ccproxyd_access_key", AccessKey)  # the key the client authenticated with


def reload_config(app: web.Application, path: str | None = None) -> Config | None:
    """Load and validate the config again; swap it in only when valid. Returns the new config or None."""
    state = app[STATE]
    try:
        new = load_config(path or state.config.path)
    except ConfigError as e:
        log.error("reload refused, keeping the running config:\n%s", e)
        return None
    state.config = new
    state.observer.log_format = new.server.log_format
    if state.mcp is not None:
        state.background(state.mcp.reload(new.mcp))
    elif new.mcp.servers:
        state.background(_start_mcp(state))
    log.info("config reloaded from %s", new.path)
    return new


# ---------------------------------------------------------------- the request pipeline


def _error_response(protocol: str | None, err: ProxyError, config: Config) -> web.Response:
    err.message = redact_secrets(err.message, config)
    if not 400 <= err.status <= 599:  # an upstream's error code that is no HTTP error status
        err.status = 502
    adapter = ADAPTERS.get(protocol or "openai") or ADAPTERS["openai"]
    status, body = adapter.encode_error(err)
    headers = dict(getattr(err, "headers", None) or {})  # a key's own limits (LimitExceeded), pacing
    if status in (429, 503, 529) and "Retry-After" not in headers:  # tell SDKs when to come back, rather than let them guess
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after or 1)))
    if isinstance(body, str):
        return web.Response(status=status, text=body, headers=headers)
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def _refused_before_routing(record: RequestRecord, e: PathNotFound, action: str, path: str) -> str | None:
    """Give a request no route matched an action and its (escaped) path, so it is logged and counted too."""
    record.protocol, record.action = e.protocol, action
    record.path = quote(path[:200], safe="/:@!$&'()*+,;=-._~%")
    return e.protocol


async def serve(state: AppState, request: web.Request) -> web.StreamResponse:
    """Every request, in order: a request id and record, the route, the access key, the key's limits, then
    :func:`handle`; any failure becomes the client protocol's error shape.

    One coroutine, not a chain of aiohttp middlewares: with any middleware registered, aiohttp wraps the
    handler in each one plus one of its own, and every resumption of the request's task (each upstream
    read, each write) passes through all of those frames again. ``state`` is bound in create_app."""
    given = request.headers.get("x-request-id", "")
    record = RequestRecord(given if _REQUEST_ID.match(given) else random_hex())
    request[RECORD] = record
    protocol: str | None = None
    loop = request.task.get_loop()  # the connection's task's loop: on Python 3.11 asking asyncio for it costs a getpid()
    task = asyncio.current_task(loop)
    state.requests[task] = record  # type: ignore[index]
    try:
        try:
            route = parse_path(request.method, request.path, request.query, client_hint(request.headers))
        except MethodNotAllowed as e:
            protocol = _refused_before_routing(record, e, "method_not_allowed", request.path)
            raise MethodNotAllowedError(f"{request.method} is not allowed on {request.path}") from None
        except PathNotFound as e:
            protocol = _refused_before_routing(record, e, "unknown_path", request.path)
            raise NotFound(f"no such endpoint: {request.method} {request.path}") from None
        if route.protocol is not None and route.protocol not in ADAPTERS:
            raise NotFound(f"the {route.protocol} protocol is not served by this build")
        protocol = route.protocol
        record.protocol, record.action = route.protocol, route.action
        config = state.config
        key = authenticate(request, state, config, route)
        if key is not None:
            request[ACCESS_KEY] = key
            record.key_name = key.name
        limited = key is not None and bool(key.limits) and route.action not in _FREE_ACTIONS and request.method != "OPTIONS"
        lease = await state.limiter.admit(key, request.content_length, config.state.on_state_error) if limited else None  # type: ignore[arg-type]
        try:
            response = await handle(request, state, route, record, key)
        finally:
            if limited:
                _settle(state, lease, record, config)
        record.status = record.status or response.status
        return response
    except ProxyError as e:
        record.status, record.error_kind = e.status, e.kind
        return _error_response(protocol, e, state.config)
    except asyncio.CancelledError:  # the client went away (nginx's 499: client closed the request)
        record.cancelled, record.status = True, 499
        raise
    except ConnectionResetError:  # the same, noticed on a read or write: one access-log line, no traceback
        record.cancelled, record.status = True, 499
        return web.Response(status=499)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unexpected error in request %s", record.request_id)
        record.status, record.error_kind = 500, "internal"
        return _error_response(protocol, ProxyError(f"internal error in ccproxyd (request id {record.request_id})"), state.config)
    finally:
        state.requests.pop(task, None)  # type: ignore[arg-type]
        if record.action and record.action not in _NOT_OBSERVED:
            # once the answer is out: aiohttp writes it when serve returns, before the loop runs this callback,
            # so the access line, metrics and the stats row (~20 µs) no longer delay it
            loop.call_soon(state.observer.finished, record)


def _presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key") or request.headers.get("x-goog-api-key") or request.query.get("key")


def find_key(keys: tuple[AccessKey, ...], presented: str) -> AccessKey | None:
    """Constant-time match against every key (no early exit that would time which one matched)."""
    found = None
    given = presented.encode()
    for key in keys:
        if hmac.compare_digest(key.key.encode(), given):
            found = key
    return found


def authenticate(request: web.Request, state: AppState, config: Config, route: Route) -> AccessKey | None:
    """The access key the request presents, checked; None where no key is asked for.
    Raises AuthError for a missing or wrong key, RateLimited for an address locked out by wrong ones."""
    if route.action in _OPEN_ACTIONS or request.method == "OPTIONS" or not config.keys:
        return None
    if route.action == "metrics" and config.server.metrics_public:
        return None
    remote = request.remote or ""
    presented = _presented_key(request)
    if not presented and route.protocol in config.server.keyless_loopback and is_loopback(remote):
        return None  # no key is fine there; a wrong one is not
    per_minute = config.server.auth_failures_per_minute
    if _auth_blocked(state, remote, per_minute):  # before comparing: a blocked address learns nothing
        raise _locked_out(state, remote)
    key = find_key(config.keys, presented) if presented else None
    if key is None:
        if presented:  # a wrong key is a guess; a missing one is not, and must not lock the address out
            _note_auth_failure(state, remote, per_minute)
        raise AuthError("missing access key" if not presented else "invalid access key")
    return key


# Actions that do not reach an upstream cost a key nothing.
_FREE_ACTIONS = frozenset({"models", "show", "version", "root", "health", "metrics", "mcp_sse", "mcp_http"})


def _settle(state: AppState, lease: Lease | None, record: RequestRecord, config: Config) -> None:
    """Charge a key with limits for what its request used, off the response's path: the client does not
    wait for the accounting (in this process it is instant: no task)."""
    if state.limiter.state.shared:
        state.background(state.limiter.finish(lease, record, config.prices))
    else:
        state.limiter.finish_now(lease, record, config.prices)


def _auth_blocked(state: AppState, remote: str, per_minute: int) -> bool:
    """Whether ``remote`` failed authentication ``per_minute`` times within the last minute."""
    failures = state.auth_failures.get(remote)
    if not failures:
        return False
    now = time.monotonic()
    while failures and now - failures[0] > 60:
        failures.popleft()
    return len(failures) >= per_minute


def _locked_out(state: AppState, remote: str) -> RateLimited:
    """The 429 for a blocked address; Retry-After: when its oldest failure leaves the one-minute window."""
    error = RateLimited("too many failed authentication attempts from this address; wait a minute")
    failures = state.auth_failures.get(remote)
    error.retry_after = max(1.0, 60 - (time.monotonic() - failures[0])) if failures else 60.0
    return error


def _note_auth_failure(state: AppState, remote: str, per_minute: int) -> None:
    if lockout_exempt(remote, state.config.server.auth_lockout_exempt):
        return  # one misconfigured local script must not lock out every local client
    failures = state.auth_failures[remote]
    failures.append(time.monotonic())
    while len(failures) > per_minute:
        failures.popleft()
    if len(state.auth_failures) > 10_000:  # bound memory under a spray of addresses: forget the stale ones
        cutoff = time.monotonic() - 60
        for address in [a for a, f in state.auth_failures.items() if not f or f[-1] < cutoff]:
            del state.auth_failures[address]
        if len(state.auth_failures) > 10_000:
            state.auth_failures.clear()


@functools.lru_cache(maxsize=64)
def _networks(specs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(spec, strict=False) for spec in specs)


def lockout_exempt(remote: str, specs: tuple[str, ...]) -> bool:
    """Whether ``remote`` is in server.auth_lockout_exempt (wrong keys from there never lock the address out)."""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in _networks(specs))


# ---------------------------------------------------------------- the handler


async def handle(request: web.Request, state: AppState, route: Route, record: RequestRecord,
                 key: AccessKey | None) -> web.StreamResponse:
    """The answer to an authenticated, admitted request, by its route's action."""
    config = state.config
    key_groups = key.groups if key else ()
    action = route.action
    dispatcher = state.dispatcher
    if request.method == "OPTIONS":
        return web.Response(status=204)
    if action in admin.ACTIONS:
        return await admin.handle(request, state, action, key)
    if action == "root" and admin.wants_html(request):
        return web.Response(status=302, headers={"Location": "/ui"})
    if action == "root":  # Ollama clients probe it and expect this text
        return web.Response(text="Ollama is running")
    if action == "health":
        return _health(request, state)
    if action == "metrics":
        if state.metrics is None:
            raise NotFound("metrics are not enabled")
        await state.limiter.refresh_budgets(config.keys)
        return web.Response(body=state.metrics.render(state, key_groups), headers={"Content-Type": METRICS_CONTENT_TYPE})
    if action in ("mcp_sse", "mcp_http"):
        if state.mcp is None:
            raise NotFound("no MCP servers are configured")
        return await state.mcp.handle(request, route)
    adapter = ADAPTERS[route.protocol or "openai"]
    if action in ("chat", "generate", "complete"):
        return await dispatcher.chat(request, route, config, record, key_groups)
    if action in EMBED_ACTIONS:
        return await embed(dispatcher, request, route, config, record, key_groups)
    if action == "models":
        body = adapter.encode_model_list(dispatcher.model_infos(config, route, key_groups), route)
    elif action == "count_tokens":
        body = await dispatcher.count_tokens(request, route, config, record, key_groups)
    elif action == "show":
        body = await dispatcher.show(request, route, config, key_groups)
    elif action == "stored":
        body = await dispatcher.stored(request, route, record)
    elif action == "version":
        body = adapter.encode_version(config.server.ollama_version or None)
    elif action == "ps":
        body = ollama_api.running(dispatcher, config, route, key_groups)
    elif action == "pull":
        return await ollama_api.pull(request, route, config, key_groups)
    elif action == "model_store":
        ollama_api.model_store(request)
    else:
        raise NotFound(f"no such endpoint: {request.path}")
    record.status = 200
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _health(request: web.Request, state: AppState) -> web.Response:
    """Readiness: the config is loaded (always, once serving), the workers are up, and not draining (503)."""
    status = read_status(state.runtime_dir)
    workers = {"configured": status["workers"], "ready": status["ready"]} if status else {"configured": 1, "ready": 1}
    if state.draining:
        verdict = "draining"
    else:
        verdict = "ok" if workers["ready"] >= workers["configured"] else "degraded"
    body: dict[str, Any] = {
        "status": verdict, "ready": not state.draining, "version": __version__,
        "uptime_s": round(time.time() - state.started, 1), "config": status["config"] if status else state.config.path,
        "workers": workers,
    }
    last_reload = status.get("last_reload") if status else state.last_reload
    if last_reload:
        body["last_reload"] = last_reload
    if request.query.get("deep"):
        presented = _presented_key(request)
        view = None
        if state.config.keys:
            remote, per_minute = request.remote or "", state.config.server.auth_failures_per_minute
            if _auth_blocked(state, remote, per_minute):
                raise _locked_out(state, remote)
            key = find_key(state.config.keys, presented) if presented else None
            if key is None:
                if presented:
                    _note_auth_failure(state, remote, per_minute)
                raise AuthError("deep health needs an access key")
            view = GroupView(state.config, key.groups) if key.groups else None
        cooldowns = state.router.snapshot()
        body["cooldowns"] = [c for c in cooldowns if view.allows_cooldown(c)] if view else cooldowns
        body["in_flight"] = state.in_flight
        body["open_streams"] = state.metrics.open_streams if state.metrics else None
        body["pid"], body["worker"] = os.getpid(), state.worker_index
        if status:
            workers["pids"] = status["pids"]
            workers["restarts"] = status["restarts"]
    return web.Response(status=503 if state.draining else 200, body=orjson.dumps(body), content_type="application/json")


# ---------------------------------------------------------------- CORS and common headers


async def _on_prepare(state: AppState, request: web.Request, response: web.StreamResponse) -> None:
    """The headers of every response, errors and streams included (bound to the app's state in create_app)."""
    headers = response.headers
    record = request.get(RECORD)
    if record is not None:
        headers["x-request-id"] = record.request_id
        if record.target:
            headers["x-ccproxy-target"] = record.target
        if record.route:
            headers["x-ccproxy-route"] = record.route
        overhead = max(0.0, time.monotonic() - record.started - record.upstream_seconds)
        headers["x-ccproxy-overhead-ms"] = f"{overhead * 1000:.2f}"
    client_headers = request.get(CLIENT_HEADERS)
    if client_headers:
        headers.update(client_headers)
    origins = state.config.server.cors_origins
    origin = request.headers.get("origin") if origins else None
    if origin and (origin in origins or "*" in origins):
        headers["access-control-allow-origin"] = origin
        headers["vary"] = "origin"
        if request.method == "OPTIONS":
            headers["access-control-allow-methods"] = "GET, POST, DELETE, OPTIONS"
            headers["access-control-allow-headers"] = request.headers.get("access-control-request-headers", "*")
            headers["access-control-max-age"] = "600"
        else:
            headers["access-control-expose-headers"] = _EXPOSED_HEADERS


_EXPOSED_HEADERS = "x-request-id, x-ccproxy-target, x-ccproxy-route, x-ccproxy-overhead-ms, mcp-session-id, x-ccproxy-usage, retry-after"


# ---------------------------------------------------------------- from aiohttp's server straight to serve()


class DirectRequest(web.Request):
    """A request aiohttp's server hands to :func:`serve` without its router (see :func:`direct_handling`).

    The router is what would fire the app's ``on_response_prepare`` signal (it adds the app to the
    request's match info, which aiohttp's hook walks): this request fires that signal itself.
    ``direct_handling`` makes a subclass per app that names the signal. (aiohttp's own answer to a
    request its parser refused fires it too, without effect: that request has no headers and no record.)"""

    _on_response_prepare: Any  # the app's on_response_prepare signal

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        await self._on_response_prepare.send(self, response)


def direct_handling(app: web.Application) -> tuple[Callable[[DirectRequest], Awaitable[web.StreamResponse]], Callable[..., DirectRequest]]:
    """The request handler and the request factory for the app's low-level ``web.Server``.

    The app has one route, which takes every path to :func:`serve`; aiohttp's router still costs
    every request a URL walk, a match-info object and a frozen list of apps (about 4 µs). This
    handler calls ``serve`` itself. A request the route would not take as it is goes through the
    router, to be answered as it always was:

    - one with an ``Expect`` header: the route's expect handler sends ``100 Continue`` first, or a 417;
    - one whose path does not start with ``/`` (``OPTIONS *``): the route does not match it, aiohttp answers 404.
    """
    state = app[STATE]
    routed = app._handle

    class AppRequest(DirectRequest):
        _on_response_prepare = app.on_response_prepare

    request_factory = functools.partial(app._make_request, _cls=AppRequest)

    async def handler(request: DirectRequest) -> web.StreamResponse:
        if "Expect" in request.headers or request.path[:1] != "/":
            return await routed(request)
        return await serve(state, request)

    return handler, request_factory


# ---------------------------------------------------------------- the app


class _MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request its HTTP parser refuses (a header over its size limit, broken framing)
    as an ERROR with a traceback; that is the client's mistake, so it becomes one WARNING line,
    without the offending bytes (they may hold a key)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (HttpProcessingError, RequestPayloadError)):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "refused a malformed HTTP request (%s)", (type(exc.__cause__ or exc).__name__,)
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_malformed_requests() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(_MalformedRequestFilter())


def create_app(config: Config) -> web.Application:
    _quiet_malformed_requests()
    bodies = BodyLogs()
    state = AppState(config, upstream=TappedUpstream(lambda: bodies.current(state.config)), bodies=bodies)
    state.observer.log_format = config.server.log_format
    state.metrics = Metrics(lambda: state.config, RECORD)
    state.observer.sinks.append(state.metrics.observe)
    state.observer.sinks.append(state.recent.finished)
    state.reload = lambda: reload_config(app)
    app = web.Application(client_max_size=config.server.max_body_bytes)  # no middlewares: serve() is the pipeline
    app[STATE] = state
    app.router.add_route("*", r"/{tail:[\s\S]*}", functools.partial(serve, state))  # every path, even one with a newline in it
    app.on_response_prepare.append(functools.partial(_on_prepare, state))
    app.on_response_prepare.append(state.metrics.on_response_prepare)
    app.cleanup_ctx.append(_shared_state_ctx)
    app.cleanup_ctx.append(_stats_ctx)
    app.cleanup_ctx.append(_conversations_ctx)
    app.cleanup_ctx.append(_metrics_ctx)
    app.cleanup_ctx.append(_upstream_ctx)
    app.cleanup_ctx.append(_mcp_ctx)
    app.cleanup_ctx.append(_admin_views_ctx)
    app.cleanup_ctx.append(_discovery_ctx)
    app.on_shutdown.append(_mcp_shutdown)
    return app


async def _shared_state_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    """With a Redis backend: limit counters there, and cooldowns published to and adopted from every instance.
    ``[state]`` is read at start only; a reload that changes it takes effect at the next restart."""
    state = app[STATE]
    if state.config.state.is_redis:
        router = state.router

        def adopt(wire: list, until: float, reason: str, key_index: int | None) -> None:
            scope = scope_from_wire(wire, state.config.providers)
            if scope is not None:
                router.adopt(scope, until, reason, key_index)

        shared = open_state(state.config, adopt)
        assert isinstance(shared, RedisState)
        state.shared = state.limiter.state = state.dispatcher.pacer.state = shared
        router.on_cool = lambda scope, until, reason, key_index: state.background(
            shared.publish_cooldown(scope_to_wire(scope, key_index), until, reason, key_index))
        router.shared_turns = shared.turns
        shared.start()
    yield
    state.router.on_cool = state.router.shared_turns = None
    await state.shared.close()


async def _stats_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    """The usage-stats writer; a database that cannot be opened disables stats, not the daemon."""
    state = app[STATE]
    server = state.config.server
    if server.stats and state.config.stats.url:
        await _start_pg_stats(state)
    elif server.stats:
        writer = StatsWriter(db_path(server), server.stats_retention_days)
        try:
            await asyncio.get_running_loop().run_in_executor(None, writer.start)
        except (OSError, sqlite3.Error) as e:
            log.error("usage stats are off: cannot open %s: %s", writer.path, e)
        else:
            state.stats = writer
            state.observer.sinks.append(writer.record)
    yield
    if isinstance(state.stats, StatsWriter):
        state.observer.sinks.remove(state.stats.record)
        await asyncio.get_running_loop().run_in_executor(None, state.stats.close)
    elif state.stats is not None:
        state.observer.sinks.remove(state.stats.record)
        await state.stats.close()
    state.bodies.close()


async def _start_pg_stats(state: AppState) -> None:
    from .stats_pg import PgStatsWriter

    writer = PgStatsWriter(state.config.stats.url or "", state.config.server.stats_retention_days)
    try:
        await writer.start()
    except Exception as e:  # noqa: BLE001 — ImportError without the extra, any connection or auth failure
        log.error("usage stats are off: cannot use PostgreSQL at %s: %s", safe_url(state.config.stats.url or ""), e)
        return
    state.stats = writer
    state.observer.sinks.append(writer.record)


async def _conversations_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    """The stored-conversation database (opened on first use), when server.conversation_store is on."""
    state = app[STATE]
    if state.config.server.conversation_store and isinstance(state.shared, RedisState):  # shared by every instance
        state.dispatcher.conversations = RedisConversationStore.from_config(state.shared, state.config.server)
    elif state.config.server.conversation_store:
        state.dispatcher.conversations = ConversationStore.from_config(state.config.server)
    yield
    if state.dispatcher.conversations is not None:
        state.dispatcher.conversations.close()


async def _metrics_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    """In a worker, share this worker's numbers with its siblings through the runtime directory."""
    state = app[STATE]
    task = None
    if state.metrics is not None and state.runtime_dir is not None and state.worker_index is not None:
        state.metrics.load_base(state.runtime_dir, state.worker_index)
        task = asyncio.get_running_loop().create_task(state.metrics.write_snapshots(state, state.runtime_dir, state.worker_index))
    yield
    if task is not None:
        task.cancel()
        state.metrics.write_snapshot(state.metrics.collect(state), state.runtime_dir, state.worker_index)  # type: ignore[union-attr, arg-type]


async def _admin_views_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    """In a worker, share this worker's live view (requests, cooldowns) with the status page."""
    state = app[STATE]
    task = None
    if state.runtime_dir is not None and state.worker_index is not None:
        task = asyncio.get_running_loop().create_task(admin_status.write_views(state))
    yield
    if task is not None:
        task.cancel()


async def _upstream_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    yield
    await app[STATE].upstream.close()


async def _discovery_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    """Upstream model lists start loading with the app, so the first model list already has them."""
    discovery = app[STATE].dispatcher.discovery
    discovery.start(app[STATE].config)
    yield
    await discovery.close()


async def _mcp_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    """The MCP proxy starts with the first configured MCP server (at start or on a reload that adds one):
    it imports the MCP SDK, ~40 MB of resident memory a proxy without MCP servers has no use for."""
    state = app[STATE]
    if state.config.mcp.servers:
        await _start_mcp(state)
    yield
    if state.mcp is not None:
        await state.mcp.close()


async def _start_mcp(state: AppState) -> None:
    from .mcpproxy import McpProxy

    mcp = McpProxy(state.config.mcp)
    await mcp.start()
    state.mcp = mcp


async def _mcp_shutdown(app: web.Application) -> None:
    """End MCP client sessions first: their open event streams would hold the shutdown for shutdown_grace."""
    if app[STATE].mcp is not None:
        await app[STATE].mcp.shutdown()
