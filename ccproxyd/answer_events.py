"""An upstream's answer on its way to the client, as unified events: guarded (a failure while reading them
becomes one error event, free of keys; the usage the upstream did not send is filled in), encoded for a
streaming client, or taken whole."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import AsyncIterator

import orjson

from . import ir
from .config import Config
from .errors import BadGateway, ProxyError, UpstreamError, UpstreamTimeout
from .observe import RequestRecord, redact_secrets
from .protocols.base import StreamEncoder
from .streams import FrameTooLarge
from .usage import UsageFiller

log = logging.getLogger("ccproxyd.dispatch")  # the dispatcher's log: it reports what happens to its answers


# What reading and decoding an upstream's events may raise that becomes the stream's error event.
READ_FAILURES = (ProxyError, FrameTooLarge, ValueError, KeyError, TypeError, AttributeError)


class _Filled:
    """The usage filler of events whose missing usage was filled in already."""

    @staticmethod
    def before(event: ir.Event) -> None:
        return None


FILLED = _Filled()


class Guarded:
    """An upstream's events as a client may see them: a failure while reading them becomes one
    StreamError, its message free of keys, and the usage the upstream did not send is filled in.

    Iterated, it gives them through :func:`_guard`. The loops every event of a stream goes through
    (the dispatcher's ``_first_events`` and ``_stream_to_client``) do what ``_guard`` does themselves, one generator layer
    less per event (tests/test_perf_equivalence.py holds both to the same bytes)."""

    __slots__ = ("events", "config", "usage", "catches")

    def __init__(self, events: AsyncIterator[ir.Event], config: Config, usage: UsageFiller | _Filled,
                 catches: tuple[type[Exception], ...] = READ_FAILURES) -> None:
        self.events = aiter(events)
        self.config = config
        self.usage = usage
        self.catches = catches  # () for events that went through a guard already

    def __aiter__(self) -> AsyncIterator[ir.Event]:
        return _guard(self)

    def redacted(self, event: ir.StreamError) -> ir.StreamError:
        return ir.StreamError(event.kind, redact_secrets(event.message, self.config), event.status)

    def failure(self, error: Exception) -> ir.StreamError:
        """The error event for one of ``catches`` raised while reading."""
        if isinstance(error, ProxyError):
            return ir.StreamError(error.kind, redact_secrets(error.message, self.config), error.status)
        if isinstance(error, FrameTooLarge):
            return ir.StreamError("bad_gateway", str(error), 502)
        log.warning("upstream stream could not be decoded: %s", redact_secrets(repr(error)[:500], self.config))
        return ir.StreamError("bad_gateway", f"upstream sent a stream that could not be read ({type(error).__name__})", 502)


async def encode_events(events: Guarded, encoder: StreamEncoder, record: RequestRecord, out: list[bytes]) -> ir.StreamError | None:
    """The rest of a stream's events encoded into ``out`` as they come, ``_guard``'s work done in this
    loop (see Guarded); the error event that ended the stream, if one did."""
    source, usage = events.events, events.usage
    while True:
        try:
            event = await anext(source)
        except StopAsyncIteration:
            return None
        except events.catches as e:
            return events.failure(e)
        if isinstance(event, ir.StreamError):
            return events.redacted(event)
        if (extra := usage.before(event)) is not None:
            count_usage(record, extra)
            out.append(encoder.encode(extra))
        if isinstance(event, ir.Usage):  # what the record counts: no call for the other events
            count_usage(record, event)
        data = encoder.encode(event)
        if data:
            out.append(data)


async def _guard(guarded: Guarded) -> AsyncIterator[ir.Event]:
    """Turn failures while reading the upstream into one StreamError event, its message free of keys;
    fill in the usage the upstream did not send (in this loop: one generator layer per event the less)."""
    usage = guarded.usage
    try:
        async for event in guarded.events:
            if isinstance(event, ir.StreamError):
                event = guarded.redacted(event)
            elif (extra := usage.before(event)) is not None:
                yield extra
            yield event
    except guarded.catches as e:
        yield guarded.failure(e)


@dataclass(slots=True)
class Whole:
    """A non-streamed upstream answer, decoded. The dispatcher's ``_collect_whole`` takes it without turning it into events and
    collecting them again (``collected`` gives what that would, tests/test_perf_equivalence.py runs both);
    iterated, it gives those events through the same chain as any other answer."""

    response: ir.Response
    config: Config
    usage: UsageFiller

    def __aiter__(self) -> AsyncIterator[ir.Event]:
        return aiter(Guarded(ir.iterate(ir.response_events(self.response)), self.config, self.usage))

    def collected(self, model: str) -> ir.Response:
        """``ir.collect`` of ``ir.response_events(response)`` with the missing usage filled in, folded directly."""
        resp, parts, chars = self.response, [], 0
        try:
            for part in resp.parts:
                if isinstance(part, ir.Text):
                    if part.text:  # an empty text opens no block
                        parts.append(ir.Text(part.text, part.provider_metadata))
                        chars += len(part.text)
                elif isinstance(part, ir.Reasoning):
                    if part.redacted is not None:
                        parts.append(ir.Reasoning(redacted=part.redacted))
                        continue
                    parts.append(ir.Reasoning(part.text or "", part.signature or None, provider_metadata=part.provider_metadata))
                    chars += len(part.text or "")
                elif isinstance(part, ir.ToolCall):
                    arguments = orjson.dumps(part.arguments).decode()
                    parts.append(ir.ToolCall(part.id, part.name, ir.parse_arguments(arguments), part.provider_metadata))
                    chars += len(part.name) + len(arguments)
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # as _guard would have turned it into an error
            log.warning("upstream stream could not be decoded: %s", redact_secrets(repr(e)[:500], self.config))
            raise BadGateway(f"upstream sent a stream that could not be read ({type(e).__name__})") from None
        filler = self.usage
        filler.chars += chars
        filler.before(resp.usage)
        usage = filler.usage  # what collecting the one Usage event gives: a fresh Usage().merge(resp.usage)
        extra = filler.before(ir.Finished(resp.finish))
        if extra is not None:
            usage = usage.merge(extra)
        return ir.Response(resp.id or "", resp.model or model, parts, resp.finish, usage)


def stream_error(event: ir.StreamError) -> ProxyError:
    """A stream's error event as the exception it stands for, so a stalled stream counts as a timeout."""
    if event.kind == "timeout":
        return UpstreamTimeout(event.message)
    if event.kind == "bad_gateway" and event.status == 502:
        return BadGateway(event.message)
    return UpstreamError(event.status, event.kind, event.message)


async def raise_errors(events: AsyncIterator[ir.Event]) -> AsyncIterator[ir.Event]:
    async for event in events:
        if isinstance(event, ir.StreamError):
            raise stream_error(event)
        yield event


def count_usage(record: RequestRecord, event: ir.Event) -> None:
    if isinstance(event, ir.Usage):
        record.input_tokens = event.input_tokens if event.input_tokens is not None else record.input_tokens
        record.output_tokens = event.output_tokens if event.output_tokens is not None else record.output_tokens
        record.cached_tokens = event.cached_input_tokens if event.cached_input_tokens is not None else record.cached_tokens
        record.reasoning_tokens = event.reasoning_tokens if event.reasoning_tokens is not None else record.reasoning_tokens
