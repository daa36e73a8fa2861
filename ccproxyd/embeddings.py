"""One embedding request from client body to JSON answer, through any protocol's upstream.

The client's adapter decodes its body into an ``EmbedRequest``; the alias is
planned like a chat request (routing, key rotation, cooldowns, failover); each
attempt's adapter gets the inputs in batches no larger than its upstream takes,
and the answers are joined back in input order before the client's adapter
encodes them. Targets whose protocol has no embeddings API are passed over; an
alias with none that can embed is the client's mistake (400).
"""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from .config import Config
from .dispatch import Dispatcher
from .request_body import read_json_body
from .errors import BadGateway, ClientError, ProxyError
from .ir_embed import EmbedRequest, EmbedResponse, join
from .observe import RequestRecord, redact_secrets
from .paths import Route
from .protocols import ADAPTERS
from .protocols.base import Adapter, UpstreamTarget
from .routing import Attempt
from .shaping import finish_call
from .upstream import parse_retry_after

EMBED_ACTIONS = frozenset({"embed", "embed_batch", "embed_legacy"})
_MAX_RESPONSE = 256 * 1024 * 1024  # a batch of large vectors as JSON numbers is big


async def embed(
    dispatcher: Dispatcher, request: web.Request, route: Route, config: Config, record: RequestRecord, key_groups: tuple[str, ...],
) -> web.Response:
    inbound = ADAPTERS[route.protocol or "openai"]
    body = await read_json_body(request, config.server.max_body_bytes, config.server.max_json_depth)
    client_req = inbound.decode_embed_request(body, route)
    plan = dispatcher.plan(config, route, client_req.model, record, key_groups)
    protocols = {config.providers[t.provider].protocol for t in plan.attempts.targets}
    if not any(ADAPTERS[p].can_embed for p in protocols):
        targets = ", ".join(str(t) for t in plan.attempts.targets)
        raise ClientError(
            f"model {plan.alias!r} cannot make embeddings: its targets ({targets}) speak {', '.join(sorted(protocols))}, "
            "which has no embeddings API; point the alias at an OpenAI, Gemini or Ollama embedding model",
            param="model",
        )
    if not client_req.inputs:  # Ollama's legacy endpoint with an empty prompt: no upstream is asked
        record.status = 200
        return web.Response(body=orjson.dumps(inbound.encode_embed_response(EmbedResponse([]), client_req, route)), content_type="application/json")
    failures: list[ProxyError] = []
    for attempt in plan.attempts:
        outbound = ADAPTERS[attempt.provider.protocol]
        if not outbound.can_embed:
            continue
        record.target, record.upstream_protocol = attempt.label, outbound.name
        try:
            answer = await _embed_all(dispatcher, request, config, client_req, attempt, outbound, record)
        except ProxyError as e:
            if not dispatcher.fail_over(attempt, e, config, failures, record):
                raise
            continue
        dispatcher.router.succeeded(attempt)
        record.input_tokens = answer.input_tokens
        record.status = 200
        out = inbound.encode_embed_response(answer, client_req, route)
        return web.Response(body=orjson.dumps(out), content_type="application/json")
    raise dispatcher._exhausted(plan, failures)


async def _embed_all(
    dispatcher: Dispatcher, request: web.Request, config: Config, client_req: EmbedRequest, attempt: Attempt,
    outbound: Adapter, record: RequestRecord,
) -> EmbedResponse:
    """Every input through one target, in batches of at most its upstream's limit, in order."""
    if client_req.has_tokens and not outbound.embeds_token_arrays:
        raise ClientError(f"token-array inputs can only go to an OpenAI upstream; {attempt.label} speaks {outbound.name}", param="input")
    size = outbound.embed_batch_limit or len(client_req.inputs)
    target = UpstreamTarget(attempt.provider, attempt.target.model, attempt.key, record.request_id)
    parts = []
    for start in range(0, len(client_req.inputs), size):
        batch = client_req.batch(start, size)
        part = await _embed_batch(dispatcher, request, config, batch, target, outbound, record)
        if len(part.vectors) != len(batch.inputs):
            raise BadGateway(f"{attempt.label} answered {len(part.vectors)} embeddings for {len(batch.inputs)} inputs")
        parts.append(part)
    return join(parts)


async def _embed_batch(
    dispatcher: Dispatcher, request: web.Request, config: Config, batch: EmbedRequest, target: UpstreamTarget,
    outbound: Adapter, record: RequestRecord,
) -> EmbedResponse:
    call = outbound.encode_embed_request(batch, target)
    finish_call(call, target.provider, request.headers, record.request_id)
    started = time.monotonic()
    resp = await dispatcher.upstream.open(call, target.provider)
    try:
        if resp.status >= 400:
            error = outbound.decode_error(resp.status, await dispatcher.upstream.read_error(resp))
            error.message = redact_secrets(error.message, config)
            error.retry_after = parse_retry_after(resp.headers)
            raise error
        body = await resp.read_all(_MAX_RESPONSE)
    finally:
        resp.close()
        record.upstream_seconds += time.monotonic() - started
    try:
        return outbound.decode_embed_response(body)
    except (ValueError, KeyError, TypeError) as e:
        raise BadGateway(f"{target.provider.name} sent an embeddings answer that could not be read: {e}") from None
