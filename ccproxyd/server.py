"""The aiohttp application: one catch-all route, middlewares, and the app's lifecycle.

Middlewares, outermost first: ``errors`` (request id, record, any failure →
the client protocol's error shape), ``auth`` (access keys). The handler then
dispatches on the parsed Route's action.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from . import __version__
from .config import AccessKey, Config, ConfigError, is_loopback, load_config
from .dispatch import Dispatcher
from .mcpproxy import McpProxy
from .errors import AuthError, ClientError, NotFound, ProxyError, RateLimited
from .observe import Observer, RequestRecord
from .paths import MethodNotAllowed, PathNotFound, Route, client_hint, parse_path
from .protocols import ADAPTERS
from .routing import Router
from .upstream import UpstreamClient

log = logging.getLogger("ccproxyd")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_OPEN_ACTIONS = frozenset({"root", "health"})


class MethodNotAllowedError(ProxyError):
    status, kind = 405, "invalid_request"


@dataclass
class AppState:
    """Everything a request needs; ``config`` is swapped whole on reload."""

    config: Config
    router: Router = field(default_factory=Router)
    upstream: UpstreamClient = field(default_factory=UpstreamClient)
    observer: Observer = field(default_factory=Observer)
    mcp: Any = None
    auth_failures: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))
    started: float = field(default_factory=time.time)
    in_flight: int = 0
    dispatcher: Dispatcher = field(init=False)

    def __post_init__(self) -> None:
        self.dispatcher = Dispatcher(self.router, self.upstream)


STATE = web.AppKey("ccproxyd_state", AppState)
RECORD = web.RequestKey("ccproxyd_record", RequestRecord)
ROUTE = web.RequestKey("ccproxyd_route", Route)
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
        asyncio.get_running_loop().create_task(state.mcp.reload(new.mcp))
    log.info("config reloaded from %s", new.path)
    return new


# ---------------------------------------------------------------- middlewares


def _error_response(protocol: str | None, err: ProxyError) -> web.Response:
    status, body = ADAPTERS[protocol or "openai"].encode_error(err)
    if isinstance(body, str):
        return web.Response(status=status, text=body)
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    given = request.headers.get("x-request-id", "")
    record = RequestRecord(given if _REQUEST_ID.match(given) else uuid.uuid4().hex)
    request[RECORD] = record
    protocol: str | None = None
    state.in_flight += 1
    try:
        try:
            route = parse_path(request.method, request.path, dict(request.query), client_hint(request.headers))
        except MethodNotAllowed as e:
            protocol = e.protocol
            raise MethodNotAllowedError(f"{request.method} is not allowed on {request.path}") from None
        except PathNotFound as e:
            protocol = e.protocol
            raise NotFound(f"no such endpoint: {request.method} {request.path}") from None
        protocol = route.protocol
        request[ROUTE] = route
        record.protocol, record.action = route.protocol, route.action
        response = await handler(request)
        record.status = record.status or response.status
        return response
    except ProxyError as e:
        record.status, record.error_kind = e.status, e.kind
        return _error_response(protocol, e)
    except asyncio.CancelledError:
        record.cancelled, record.status = True, record.status or 499
        raise
    except (ConnectionResetError, web.HTTPException):
        raise
    except Exception:
        log.exception("unexpected error in request %s", record.request_id)
        record.status, record.error_kind = 500, "internal"
        return _error_response(protocol, ProxyError(f"internal error in ccproxyd (request id {record.request_id})"))
    finally:
        state.in_flight -= 1
        if record.action and record.action not in _OPEN_ACTIONS:
            state.observer.finished(record)


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


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = request.get(ROUTE)
    if route is None or route.action in _OPEN_ACTIONS or request.method == "OPTIONS":
        return await handler(request)
    state = request.app[STATE]
    config = state.config
    if not config.keys:
        return await handler(request)
    if route.action == "metrics" and config.server.metrics_public:
        return await handler(request)
    remote = request.remote or ""
    if route.protocol in config.server.keyless_loopback and is_loopback(remote):
        return await handler(request)
    presented = _presented_key(request)
    key = find_key(config.keys, presented) if presented else None
    if key is None:
        _note_auth_failure(state, remote, config.server.auth_failures_per_minute)
        raise AuthError("missing access key" if not presented else "invalid access key")
    request[ACCESS_KEY] = key
    request[RECORD].key_name = key.name
    return await handler(request)


def _note_auth_failure(state: AppState, remote: str, per_minute: int) -> None:
    now = time.monotonic()
    failures = state.auth_failures[remote]
    while failures and now - failures[0] > 60:
        failures.popleft()
    if len(failures) >= per_minute:
        raise RateLimited("too many failed authentication attempts from this address; wait a minute")
    failures.append(now)
    if len(state.auth_failures) > 10_000:  # bound memory under a spray of addresses
        state.auth_failures.clear()


# ---------------------------------------------------------------- the handler


async def handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    config = state.config
    route = request[ROUTE]
    record = request[RECORD]
    key = request.get(ACCESS_KEY)
    key_groups = key.groups if key else ()
    action = route.action
    dispatcher = state.dispatcher
    if request.method == "OPTIONS":
        return web.Response(status=204)
    if action == "root":
        return web.Response(text="ccproxyd is running")
    if action == "health":
        return _health(request, state)
    if action == "metrics":
        metrics = getattr(state, "metrics", None)
        if metrics is None:
            raise NotFound("metrics are not enabled")
        return web.Response(body=metrics.render(state), content_type="text/plain", charset="utf-8")
    if action in ("mcp_sse", "mcp_http"):
        return await state.mcp.handle(request, route)
    adapter = ADAPTERS[route.protocol or "openai"]
    if action == "chat":
        return await dispatcher.chat(request, route, config, record, key_groups)
    if action == "models":
        body = adapter.encode_model_list(dispatcher.model_infos(config, route, key_groups), route)
    elif action == "count_tokens":
        body = await dispatcher.count_tokens(request, route, config, record, key_groups)
    elif action == "show":
        body = await dispatcher.show(request, route, config, key_groups)
    elif action == "version":
        body = adapter.encode_version()
    else:
        raise NotFound(f"no such endpoint: {request.path}")
    record.status = 200
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _health(request: web.Request, state: AppState) -> web.Response:
    body: dict[str, Any] = {"status": "ok", "version": __version__, "uptime_s": round(time.time() - state.started, 1)}
    if request.query.get("deep"):
        presented = _presented_key(request)
        if state.config.keys and not (presented and find_key(state.config.keys, presented)):
            raise AuthError("deep health needs an access key")
        body["cooldowns"] = state.router.snapshot()
        body["in_flight"] = state.in_flight
    return web.Response(body=orjson.dumps(body), content_type="application/json")


# ---------------------------------------------------------------- CORS and common headers


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    record = request.get(RECORD)
    if record is not None:
        response.headers["x-request-id"] = record.request_id
    origins = request.app[STATE].config.server.cors_origins
    origin = request.headers.get("origin")
    if origins and origin and (origin in origins or "*" in origins):
        response.headers["access-control-allow-origin"] = origin
        response.headers["vary"] = "origin"
        if request.method == "OPTIONS":
            response.headers["access-control-allow-methods"] = "GET, POST, DELETE, OPTIONS"
            response.headers["access-control-allow-headers"] = request.headers.get("access-control-request-headers", "*")
            response.headers["access-control-max-age"] = "600"
        else:
            response.headers["access-control-expose-headers"] = "x-request-id, x-ccproxy-target, x-ccproxy-overhead-ms, mcp-session-id"


# ---------------------------------------------------------------- the app


def create_app(config: Config) -> web.Application:
    state = AppState(config)
    state.observer.log_format = config.server.log_format
    app = web.Application(middlewares=[errors_middleware, auth_middleware], client_max_size=config.server.max_body_bytes)
    app[STATE] = state
    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_response_prepare.append(_on_prepare)
    app.cleanup_ctx.append(_upstream_ctx)
    app.cleanup_ctx.append(_mcp_ctx)
    app.on_shutdown.append(_mcp_shutdown)
    return app


async def _upstream_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    yield
    await app[STATE].upstream.close()


async def _mcp_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    """The MCP proxy exists even with no servers configured, so a reload can add some."""
    state = app[STATE]
    state.mcp = McpProxy(state.config.mcp)
    await state.mcp.start()
    yield
    await state.mcp.close()


async def _mcp_shutdown(app: web.Application) -> None:
    """End MCP client sessions first: their open event streams would hold the shutdown for shutdown_grace."""
    await app[STATE].mcp.shutdown()
