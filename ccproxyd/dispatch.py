"""One chat request from decoded client body to bytes on the client's socket.

The dispatcher knows adapters only through their common interface: it decodes
with the client's adapter, plans attempts, encodes with each upstream's
adapter, and streams IR events back through the client's encoder. Failover is
possible until the first byte reaches the client.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from functools import partial
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Mapping

import orjson
from aiohttp import web

from . import conversations, ir, rules
from .answer_events import FILLED, Guarded, Whole, count_usage, encode_events, raise_errors, stream_error
from .compat import parse_stream, prepare_request
from .config import Alias, Config, Group
from .discovery import Discovery
from .errors import (
    BadGateway,
    ClientError,
    Forbidden,
    NotFound,
    ProxyError,
    RateLimited,
    Unavailable,
    UpstreamError,
)
from .images import inline_images
from .limits import Pacer, estimate_tokens
from .observe import BodyLog, RequestRecord, redact_secrets
from .paths import Route
from .protocols import ADAPTERS
from .protocols.base import Adapter, ModelInfo, Relay, UpstreamCall, UpstreamTarget
from .request_body import read_json_body
from .routing import Attempt, AttemptPlan, Router, bind_model, is_retryable, resolve_alias, resolve_group
from .shaping import finish_call, shape_request, shapes_nothing, use_compat
from .state import LocalState
from .toolnames import fit_request
from .upstream import UpstreamClient, UpstreamResponse, limit_headers, parse_retry_after
from .usage import ESTIMATED_HEADERS, UsageFiller

log = logging.getLogger("ccproxyd.dispatch")

_MAX_RESPONSE = 64 * 1024 * 1024
_BODY_LOG_LIMIT = 1024 * 1024  # bytes of one streamed answer kept in the body log
_ALIASES_KEPT = 4096  # resolved (group, model name) pairs kept per config
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
ALIAS_HEADER = "x-ccproxy-alias"  # names the alias itself, bypassing the group's routing rules
# Headers for whatever response the client gets (success, stream or error): the upstream's rate-limit headers, x-ccproxy-usage.
CLIENT_HEADERS = web.RequestKey("ccproxyd_client_headers", dict)


class _PacedAttempts:
    """The plan's attempts, less those whose upstream is over its rpm/tpm pacing. When every one was,
    the soonest is waited for up to ``state.queue_seconds``; otherwise ``wait`` says how long to wait.

    Not an async generator: the request returns from inside its loop, and an async generator left
    unfinished is closed by a task the event loop is woken up for, once per request."""

    def __init__(self, pacer: Pacer, router: Router, attempts: AttemptPlan, config: Config, body_bytes: int | None,
                 record: RequestRecord) -> None:
        self.pacer, self.router, self.attempts, self.config, self.record = pacer, router, attempts, config, record
        self.estimate = estimate_tokens(body_bytes)
        self.remaining: Iterator[Attempt] | None = None
        self.deferred: list[tuple[float, Attempt]] = []
        self.wait: float | None = None  # seconds until the soonest paced target may take the request

    async def next(self) -> Attempt | None:
        """The next attempt to make; None when there is none (left)."""
        if self.remaining is None:
            if self.router.shared_turns is not None:  # shared state only: no coroutine for the local case
                await self.router.fetch_turns(self.attempts)
            self.remaining = iter(self.attempts)
        for attempt in self.remaining:
            if not attempt.provider.pacing and not attempt.target.pacing:  # unpaced: no coroutine to ask the pacer
                return attempt
            wait = await self._take(attempt)
            if wait is None:
                return attempt
            self.record.attempts.append(f"{attempt.label}:paced")
            self.deferred.append((wait, attempt))
        if not self.deferred:
            return None
        wait, attempt = min(self.deferred, key=lambda d: d[0])
        self.deferred = []  # waited for once
        if wait <= self.config.state.queue_seconds:
            await asyncio.sleep(wait)
            wait = await self._take(attempt)
            if wait is None:
                return attempt
        self.wait = wait
        return None

    def _take(self, attempt: Attempt) -> Awaitable[float | None]:
        return self.pacer.take(attempt.provider.name, attempt.provider.pacing, attempt.label, attempt.target.pacing, self.estimate)

    def refusal(self, alias: str) -> RateLimited:
        wait = max(1, math.ceil(self.wait or 1))
        error = RateLimited(f"every target of {alias!r} is at its configured rpm/tpm pacing; retry in {wait}s")
        error.headers = {"Retry-After": str(wait)}  # type: ignore[attr-defined]
        return error


@dataclass(slots=True)
class Plan:
    group: Group
    alias: str
    attempts: AttemptPlan  # lazy: each attempt is chosen after the previous one failed


class Dispatcher:
    def __init__(self, router: Router, upstream: UpstreamClient, body_log: Callable[[], BodyLog | None] = lambda: None,
                 pacer: Pacer | None = None) -> None:
        self.router = router
        self.upstream = upstream
        self.pacer = pacer or Pacer(LocalState())
        self.body_log = body_log  # the client side of server.log_bodies (the upstream side is logged by the client)
        self.discovery = Discovery(upstream)
        self.stopping = False  # set by drain.py just before it cancels what outlived shutdown_grace
        self.conversations: Any = None  # conversations.ConversationStore or a RedisConversationStore, set by the server
        self._aliases_of: Config | None = None
        self._aliases: dict[tuple[str, str], Alias] = {}

    # ------------------------------------------------------------ planning

    def plan(
        self, config: Config, route: Route, model: str, record: RequestRecord, key_groups: tuple[str, ...] = (),
        client_req: ir.Request | Callable[[], ir.Request] | None = None, headers: Mapping[str, str] | None = None,
    ) -> Plan:
        """With ``client_req`` (or a function decoding it, called only when a rule needs it), the group's
        routing rules may pick the alias, unless the client named one itself (``group@alias`` or the
        ``x-ccproxy-alias`` header)."""
        forced = (headers.get(ALIAS_HEADER) or None) if headers is not None else None
        group, alias_name = _allowed_group(config, route, forced or model, key_groups)
        requested, rule = alias_name, None
        if group.routes and client_req is not None and forced is None and alias_name == model:
            decoded = client_req if isinstance(client_req, ir.Request) else client_req()
            rule = rules.choose(group.routes, decoded, route.protocol)
            alias_name = rule.use if rule is not None else alias_name
        alias = self._alias(config, group, alias_name)
        record.group, record.alias, record.route = group.name, requested, rule.label if rule is not None else None
        return Plan(group, alias_name, self.router.plan(config, group, alias))

    def _alias(self, config: Config, group: Group, name: str) -> Alias:
        """``resolve_alias`` with the client's model bound in, kept for the config it was found in (a reload
        brings a new one): a config with many aliases or patterns pays its search once per name."""
        if self._aliases_of is not config:
            self._aliases_of, self._aliases = config, {}
        key = (group.name, name)
        alias = self._aliases.get(key)
        if alias is None:
            alias = bind_model(resolve_alias(group, name), name)
            if len(self._aliases) < _ALIASES_KEPT:  # names are the clients' to choose: a pattern alias takes any
                self._aliases[key] = alias
        return alias

    # ------------------------------------------------------------ chat

    async def chat(self, request: web.Request, route: Route, config: Config, record: RequestRecord, key_groups: tuple[str, ...]) -> web.StreamResponse:
        """One coroutine for the whole request (no inner one just to catch a shutdown's cancellation)."""
        try:
            inbound = ADAPTERS[route.protocol or "openai"]
            body = await read_json_body(request, config.server.max_body_bytes, config.server.max_json_depth)
            bodies = self.body_log()
            if bodies is not None:
                bodies.write({"request_id": record.request_id, "direction": "client_request", "path": request.path, "body": body})
            relay = inbound.relay(body, route, request.headers)  # a plain request: decoded only if need be
            client_req = inbound.decode_request(body, route, request.headers) if relay is None else None
            if client_req is not None:
                if inbound.continues(client_req) is not None:  # no coroutine for the requests that continue nothing
                    client_req = await conversations.resume(self.conversations, inbound, client_req, record.key_name or "")
                record.stream = client_req.stream
                plan = self.plan(config, route, client_req.model, record, key_groups, client_req, request.headers)
                local = inbound.answer_locally(client_req)
                if local is not None:
                    record.status = 200
                    return web.Response(body=orjson.dumps(local), content_type="application/json")
            else:
                plan = self.plan(config, route, relay.model, record, key_groups, relay.request, request.headers)
            failures: list[ProxyError] = []
            attempts = _PacedAttempts(self.pacer, self.router, plan.attempts, config, request.content_length, record)
            while (attempt := await attempts.next()) is not None:
                outbound = ADAPTERS[attempt.provider.protocol]
                compat = use_compat(plan.group, attempt.provider, route.compat)
                record.target, record.compat, record.upstream_protocol = attempt.label, compat, outbound.name
                relayed = relay is not None and outbound is inbound and not compat and shapes_nothing(
                    plan.group, attempt.provider, plan.alias, _default_max_tokens(config, outbound))
                if client_req is None and not relayed:
                    client_req = relay.request()
                release: list[Any] = []
                answer = None
                try:
                    try:
                        if relayed:
                            answer = await self._relayed(request, config, relay, attempt, outbound, record, release)
                        else:
                            events = await self._open_events(request, config, client_req, plan, attempt, outbound, compat, record, release)
                            if client_req.stream:
                                first = await self._first_events(events, record)
                            elif isinstance(events, Whole):  # decoded already: no coroutine to collect it
                                response = self._collect_whole(events, client_req, record)
                            else:
                                response = await self._collect(events, client_req, record)
                    except ProxyError as e:
                        if not self.fail_over(attempt, e, config, failures, record):
                            raise
                        continue
                    self.router.succeeded(attempt)
                    if record.stream:
                        if not outbound.streams_usage(attempt.provider):  # known before the headers go: say so
                            request[CLIENT_HEADERS].update(ESTIMATED_HEADERS)
                        if conversations.keeps(self.conversations, inbound, client_req):  # it watches the guarded events
                            kept = conversations.keep_stream(self.conversations, inbound, client_req, record.key_name or "", first, aiter(events))
                            events = Guarded(kept, config, FILLED, catches=())
                        return await self._stream_to_client(request, route, inbound, client_req, first, events, record, bodies,
                                                            release[0] if release else None, attempt, config.server.cooldown_max)
                    record.status = 200
                    if answer is None:
                        if conversations.keeps(self.conversations, inbound, client_req):
                            await conversations.keep(self.conversations, inbound, client_req, response, record.key_name or "")
                        answer = inbound.encode_response(response, client_req)
                    if bodies is not None:
                        bodies.write({"request_id": record.request_id, "direction": "client_response", "status": 200, "body": answer})
                    return web.Response(body=orjson.dumps(answer), content_type="application/json")
                finally:
                    for resp in release:
                        resp.close()
            if attempts.wait is not None and not failures:
                raise attempts.refusal(plan.alias)
            raise self._exhausted(plan, failures, record.attempts)
        except asyncio.CancelledError:
            if self.stopping:  # not answered within shutdown_grace (a stream says so itself, in _stream_to_client)
                raise Unavailable("server shutting down") from None
            raise

    def fail_over(self, attempt: Attempt, error: ProxyError, config: Config, failures: list[ProxyError], record: RequestRecord) -> bool:
        """After a failed attempt: False when the error is the client's to see; otherwise the
        failure cools its target, is kept for the final error and logged, and the next attempt may go."""
        if not is_retryable(error):
            return False
        self.router.failed(attempt, error, config.server.cooldown_max)
        failures.append(error)
        record.attempts.append(f"{attempt.label}:{error.status}")
        log.warning("%s: %s failed with %d (%s)", record.request_id, attempt.label, error.status, error.message)
        return True

    async def _open_events(
        self, request: web.Request, config: Config, client_req: ir.Request, plan: Plan, attempt: Attempt,
        outbound: Adapter, compat: bool, record: RequestRecord, release: list[Any],
    ) -> AsyncIterator[ir.Event]:
        """The upstream's answer as IR events; the upstream response is put in ``release`` to be closed."""
        shaped = shape_request(client_req, plan.group, attempt.provider, plan.alias, _default_max_tokens(config, outbound))
        outbound.check_request(shaped)
        tools, names = shaped.tools, None
        if compat:  # also without tools: earlier tool calls in the history must become text
            shaped = prepare_request(shaped, plan.group.prompt_position)
        else:
            shaped, names = fit_request(shaped, outbound.tool_names, outbound.rename_tools_in_extras)  # refused names → safe ones
        if outbound.inline_images_only:
            shaped = await inline_images(shaped, self.upstream, config.server)
        target = UpstreamTarget(attempt.provider, attempt.target.model, attempt.key, record.request_id)
        call = outbound.encode_request(shaped, target)
        finish_call(call, attempt.provider, request.headers, record.request_id)
        resp, body = await self._send(request, config, call, attempt, outbound, record, release)
        if body is None:
            events = outbound.decode_stream(resp.chunks)
        else:
            whole = _decoded(outbound, body, attempt)
            if not (compat and tools) and names is None and not client_req.stream:  # renamed tools are restored below
                return Whole(whole, config, _usage_filler(client_req, request, record))
            events = ir.iterate(ir.response_events(whole))
        if compat and tools:
            events = parse_stream(events, tools)
        elif names is not None:
            events = names.restore(events)
        return Guarded(events, config, _usage_filler(client_req, request, record))

    async def _relayed(
        self, request: web.Request, config: Config, relay: Relay, attempt: Attempt, outbound: Adapter,
        record: RequestRecord, release: list[Any],
    ) -> dict[str, Any]:
        """The client's answer to a relayed request: the upstream's, re-encoded straight from its JSON when it
        is plain, else read as any other answer."""
        call = relay.call(UpstreamTarget(attempt.provider, attempt.target.model, attempt.key, record.request_id))
        finish_call(call, attempt.provider, request.headers, record.request_id)
        body = (await self._send(request, config, call, attempt, outbound, record, release))[1]
        assert body is not None  # a relayed request does not stream
        answered = relay.answer(body)
        if answered is not None:
            count_usage(record, answered[1])
            return answered[0]
        client_req = relay.request()
        whole = Whole(_decoded(outbound, body, attempt), config, _usage_filler(client_req, request, record))
        return outbound.encode_response(self._collect_whole(whole, client_req, record), client_req)

    async def _send(
        self, request: web.Request, config: Config, call: UpstreamCall, attempt: Attempt, outbound: Adapter,
        record: RequestRecord, release: list[Any],
    ) -> tuple[UpstreamResponse, bytes | None]:
        """The upstream response to ``call`` (put in ``release`` to be closed), and its whole body unless it
        streams. An error status, or an error sent as JSON in place of a stream, raises it."""
        started = time.monotonic()
        request[CLIENT_HEADERS] = {}  # nothing of an earlier attempt's answer
        try:
            resp = await self.upstream.open(call, attempt.provider)
            release.append(resp)
            request[CLIENT_HEADERS] = limit_headers(resp.headers)
            if resp.status >= 400:
                error = outbound.decode_error(resp.status, await self.upstream.read_error(resp))
                error.message = redact_secrets(error.message, config)  # before any log line or client sees it
                error.retry_after = parse_retry_after(resp.headers)
                raise error
            if not call.stream:
                return resp, await resp.read_all(_MAX_RESPONSE)
            if resp.headers.get("content-type", "").startswith("application/json"):
                # asked for a stream, answered with one JSON body: most often an error sent with 200
                whole = await resp.read_all(_MAX_RESPONSE)
                if _is_error_body(whole):
                    error = outbound.decode_error(502, whole)
                    error.message = redact_secrets(error.message, config)
                    raise error
                resp.chunks = _replay(whole)
            return resp, None
        finally:
            record.upstream_seconds += time.monotonic() - started

    async def _first_events(self, events: Guarded, record: RequestRecord) -> list[ir.Event]:
        """Events up to the first content, so an early upstream error can still fail over."""
        started = time.monotonic()
        first: list[ir.Event] = []
        source, usage = events.events, events.usage
        while True:  # _guard's loop, done here (see Guarded)
            try:
                event = await anext(source)
            except StopAsyncIteration:
                break
            except events.catches as e:
                raise stream_error(events.failure(e)) from None
            if isinstance(event, ir.StreamError):
                raise stream_error(events.redacted(event))
            if (extra := usage.before(event)) is not None:
                first.append(extra)
            first.append(event)
            if not isinstance(event, (ir.ResponseStart, ir.Usage)):
                break
        record.upstream_seconds += time.monotonic() - started
        return first

    async def _stream_to_client(
        self, request: web.Request, route: Route, inbound: Adapter, client_req: ir.Request,
        first: list[ir.Event], events: Guarded, record: RequestRecord, bodies: BodyLog | None,
        upstream: UpstreamResponse | None = None, attempt: Attempt | None = None, cap: float = 0,
    ) -> web.StreamResponse:
        """The first events are written at once; after them, what one upstream read yields goes in one write."""
        encoder = inbound.stream_encoder(client_req, route)
        resp = web.StreamResponse(status=200, headers=STREAM_HEADERS)
        resp.content_type = encoder.content_type
        await resp.prepare(request)
        record.status = 200
        record.ttfb = time.monotonic() - record.started
        sent: list[bytes] = []
        write = resp.write if bodies is None else _teed(resp, sent)
        pending: list[bytes] = []

        async def flush() -> None:
            if pending:
                data = b"".join(pending)
                pending.clear()
                await write(data)

        try:
            out = encoder.begin()
            for event in first:
                count_usage(record, event)
                out += encoder.encode(event)
            await write(out)
            if upstream is not None:
                upstream.before_read = flush
            failed = await encode_events(events, encoder, record, pending)
            if failed is None:
                pending.append(encoder.end())
            else:
                record.error_kind = failed.kind
                if attempt is not None:
                    self._cool_on_error(failed, attempt, cap)
                pending.append(encoder.error(UpstreamError(failed.status, failed.kind, failed.message)))
            await flush()
            await resp.write_eof()
        except ConnectionResetError:  # the client hung up: the access log says cancelled; the upstream is closed by chat()
            record.cancelled, record.status = True, 499
        except asyncio.CancelledError:
            if not self.stopping:  # the client hung up (aiohttp cancels the handler)
                raise
            record.error_kind = "shutdown"  # the access log says so; metrics do not count it against the upstream
            try:
                await write(b"".join(pending) + encoder.error(Unavailable("server shutting down")))
                await resp.write_eof()
            except ConnectionResetError:
                pass
        finally:
            if bodies is not None:
                text = b"".join(sent)[:_BODY_LOG_LIMIT].decode("utf-8", "replace")
                bodies.write({"request_id": record.request_id, "direction": "client_response", "status": 200, "stream": True, "body": text})
        return resp

    async def _collect(self, events: AsyncIterator[ir.Event], client_req: ir.Request, record: RequestRecord) -> ir.Response:
        started = time.monotonic()
        response = await ir.collect(raise_errors(events), client_req.model)
        record.upstream_seconds += time.monotonic() - started
        count_usage(record, response.usage)
        return response

    @staticmethod
    def _collect_whole(events: Whole, client_req: ir.Request, record: RequestRecord) -> ir.Response:
        """``_collect`` of an answer decoded whole."""
        started = time.monotonic()
        response = events.collected(client_req.model)
        record.upstream_seconds += time.monotonic() - started
        count_usage(record, response.usage)
        return response

    def _cool_on_error(self, event: ir.StreamError, attempt: Attempt, cap: float) -> None:
        """A failure after the first byte cannot fail over, but still cools its target."""
        error = stream_error(event)
        if is_retryable(error):
            self.router.failed(attempt, error, cap)

    @staticmethod
    def _exhausted(plan: Plan, failures: list[ProxyError], tried: list[str]) -> ProxyError:
        """The last failure as the client's answer: its status and message stand (the upstream
        decides), with what was tried added; Retry-After is the upstream's, else the soonest cooldown's end."""
        attempts = plan.attempts
        if not failures:  # only when the alias has no target at all
            return Unavailable(f"no target of {plan.alias!r} could be tried")
        last = failures[-1]
        summary = f"every attempt for {plan.alias!r} failed: {', '.join(tried)}"
        if attempts.forced is not None:
            summary += f"; every target was cooling down, so only {attempts.forced.label} (free again first) was tried"
        elif attempts.skipped:
            summary += f"; {attempts.skipped} target(s) skipped as cooling down"
        last.message = f"{last.message} (ccproxyd: {summary})"
        if last.retry_after is None and last.status in (429, 503, 529):  # the statuses that get a Retry-After
            wait = attempts.retry_in()
            last.retry_after = max(1.0, wait) if wait is not None else 1.0
        return last

    # ------------------------------------------------------------ the other endpoints

    def model_infos(self, config: Config, route: Route, key_groups: tuple[str, ...]) -> list[ModelInfo]:
        group, _ = _allowed_group(config, route, "", key_groups)
        infos = [self._info(config, a) for a in group.aliases if not a.is_pattern]
        named = {i.id for i in infos}
        return infos + [i for i in self.discovery.listed(config, group) if i.id not in named]

    @staticmethod
    def _info(config: Config, alias: Any) -> ModelInfo:
        providers = [config.providers[t.provider] for t in alias.targets]
        vision = bool(providers) and all(p.vision for p in providers)
        return ModelInfo(alias.name, vision=vision, targets=tuple(str(t) for t in alias.targets), kind=alias.kind)

    async def show(self, request: web.Request, route: Route, config: Config, key_groups: tuple[str, ...]) -> dict[str, Any]:
        adapter = ADAPTERS[route.protocol or "ollama"]
        body = await read_json_body(request, config.server.max_body_bytes, config.server.max_json_depth)
        model = adapter.model_from_body(body)
        if not model:
            raise ClientError("model is required", param="model")
        group, name = _allowed_group(config, route, model, key_groups)
        alias = resolve_alias(group, name)
        info = self.discovery.find(config, alias, name) or self._info(config, alias)
        info.id = name
        return adapter.encode_model_info(info)

    async def count_tokens(self, request: web.Request, route: Route, config: Config, record: RequestRecord, key_groups: tuple[str, ...]) -> dict[str, Any]:
        """Forwarded to an upstream that can count; otherwise (or if that fails) estimated."""
        inbound = ADAPTERS[route.protocol or "claude"]
        body = await read_json_body(request, config.server.max_body_bytes, config.server.max_json_depth)
        client_req = inbound.decode_request(body, route, request.headers)
        client_req = await conversations.resume(self.conversations, inbound, client_req, record.key_name or "")
        plan = self.plan(config, route, client_req.model, record, key_groups, client_req, request.headers)
        for attempt in itertools.islice(plan.attempts, 1):
            outbound = ADAPTERS[attempt.provider.protocol]
            target = UpstreamTarget(attempt.provider, attempt.target.model, attempt.key, record.request_id)
            shaped = shape_request(client_req, plan.group, attempt.provider, plan.alias)
            shaped, _ = fit_request(shaped, outbound.tool_names, outbound.rename_tools_in_extras)
            call = outbound.encode_count_tokens_request(shaped, target)
            if call is None:
                break
            finish_call(call, attempt.provider, request.headers, record.request_id)
            record.target = attempt.label
            try:
                resp = await self.upstream.open(call, attempt.provider)
                data = await self.upstream.read_error(resp)  # reads and releases whatever the status
                if resp.status < 400:
                    return inbound.encode_count_tokens(outbound.decode_count_tokens(data))
                log.warning("%s count_tokens answered %d; estimating instead", attempt.label, resp.status)
            except (ProxyError, ValueError, KeyError) as e:
                log.warning("%s count_tokens failed (%s); estimating instead", attempt.label, e)
        return inbound.encode_count_tokens(ir.estimate_tokens(client_req))

    async def stored(self, request: web.Request, route: Route, record: RequestRecord) -> dict[str, Any]:
        """GET or DELETE of a stored response, only ever the asking key's own."""
        adapter = ADAPTERS[route.protocol or "openai"]
        store, owner, rid = self.conversations, record.key_name or "", route.item or ""
        if store is None:
            raise NotFound("stored conversations are off on this ccproxyd (server.conversation_store)")
        if request.method == "DELETE":
            if not await store.delete(owner, rid):
                raise NotFound(f"Response with id '{rid}' not found.")
            return adapter.encode_stored(rid, None)
        found = await store.get(owner, rid)
        if found is None:
            raise NotFound(f"Response with id '{rid}' not found.")
        return adapter.encode_stored(rid, found)


def _allowed_group(config: Config, route: Route, model: str, key_groups: tuple[str, ...]) -> tuple[Group, str]:
    """The request's group and alias name; 403 when the access key is limited to other groups."""
    group, name = resolve_group(config, route.group, model)
    if key_groups and group.name not in key_groups:
        raise Forbidden(f"this access key may not use group {group.name!r}")
    return group, name


def _teed(resp: web.StreamResponse, sent: list[bytes]) -> Callable[[bytes], Awaitable[None]]:
    """``resp.write`` that also keeps what it sent (up to the body log's limit)."""
    kept = 0

    async def write(data: bytes) -> None:
        nonlocal kept
        if kept < _BODY_LOG_LIMIT:
            sent.append(data)
            kept += len(data)
        await resp.write(data)

    return write


async def _replay(body: bytes) -> AsyncIterator[bytes]:
    yield body


def _is_error_body(body: bytes) -> bool:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and "error" in data


def _default_max_tokens(config: Config, outbound: Adapter) -> int | None:
    return config.server.default_max_tokens if outbound.requires_max_tokens else None


def _decoded(outbound: Adapter, body: bytes, attempt: Attempt) -> ir.Response:
    try:
        return outbound.decode_response(body)
    except (ValueError, KeyError, TypeError) as e:
        raise BadGateway(f"{attempt.provider.name} sent a response that could not be read: {e}") from None


def _usage_filler(client_req: ir.Request, request: web.Request, record: RequestRecord) -> UsageFiller:
    """Fills in the usage an upstream leaves out, and says so on the record and in the client's headers."""
    return UsageFiller(client_req, partial(_mark_estimated, request, record))


def _mark_estimated(request: web.Request, record: RequestRecord) -> None:
    record.usage_estimated = True
    request[CLIENT_HEADERS].update(ESTIMATED_HEADERS)
