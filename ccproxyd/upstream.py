"""The one pooled HTTP client every upstream call goes through, with the four timeouts.

Per provider, in seconds, 0 disabling one: ``connect`` bounds the TCP/TLS
connect; ``first_byte`` the wait from sending the request to the first body
bytes (the response headers must come within it too); ``idle`` every later gap
between body chunks; ``total`` the whole exchange.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp
import orjson

from .config import Provider
from .errors import BadGateway, UpstreamTimeout
from .protocols.base import UpstreamCall
from .protocols.demo import answer as demo_answer

_MAX_ERROR_BODY = 64 * 1024


class ConnectFailed(BadGateway):
    """The upstream could not be reached at all (refused, unresolvable, TLS failure): the whole provider is at fault."""


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: Mapping[str, str]
    chunks: AsyncIterator[bytes]
    response: aiohttp.ClientResponse | None  # None: answered in process (the demo provider)
    opened_at: float  # monotonic time the headers arrived
    # awaited before each read of the body from the network: a streaming reader writes what it has
    # made of the data so far in one go there, rather than one write per event
    before_read: Callable[[], Awaitable[None]] | None = None

    async def read_all(self, limit: int) -> bytes:
        parts, size = [], 0
        async for chunk in self.chunks:
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                raise BadGateway(f"upstream response is larger than {limit} bytes")
        return b"".join(parts)

    def close(self) -> None:
        """Drop the connection unless the body was read to its end (then it went back to the pool already)."""
        if self.response is not None:
            self.response.close()


class UpstreamClient:
    """Owns the shared ClientSession (keep-alive pool); one per worker."""

    def __init__(self, limit_per_host: int = 0) -> None:  # 0: no cap; every open stream holds a connection
        self._limit_per_host = limit_per_host
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self._limit_per_host, keepalive_timeout=60, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                # no cookie jar: the session serves every access key, so an upstream's cookies must not be replayed
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=True,
                json_serialize=lambda o: orjson.dumps(o).decode(),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def open(self, call: UpstreamCall, provider: Provider) -> UpstreamResponse:
        """Send the request and wait for the headers; the body is read through ``chunks``."""
        if provider.protocol == "demo":  # served in process: no connection, nothing to time out
            status, headers, chunks = demo_answer(call)
            return UpstreamResponse(status, headers, chunks, None, time.monotonic())
        t = provider.timeouts
        sent = time.monotonic()
        deadline = sent + t.total if t.total else None
        first_byte_by = sent + t.first_byte if t.first_byte else None
        timeout = _client_timeout(t.connect)
        kwargs: dict = {}
        if provider.proxy:
            kwargs["proxy"] = provider.proxy
        if not provider.verify_tls:
            kwargs["ssl"] = False
        data = orjson.dumps(call.body) if call.method != "GET" else None
        try:
            async with asyncio.timeout(_seconds_left(first_byte_by, deadline)):
                response = await self.session.request(call.method, call.url, data=data, headers=call.headers, timeout=timeout, **kwargs)
        # aiohttp's own timeouts are TimeoutErrors too: they must be told apart first
        except aiohttp.ServerTimeoutError:
            raise UpstreamTimeout(f"{provider.name}: connecting took longer than {t.connect:g}s") from None
        except TimeoutError:
            if deadline and time.monotonic() >= deadline:
                raise UpstreamTimeout(f"{provider.name} did not finish within {t.total:g}s") from None
            raise UpstreamTimeout(f"{provider.name} sent no response headers within {t.first_byte:g}s") from None
        except aiohttp.ClientConnectorError as e:
            why = e.os_error.strerror or str(e.os_error) or type(e).__name__
            raise ConnectFailed(f"{provider.name} is unreachable ({why})") from None
        except aiohttp.ClientError as e:
            raise BadGateway(f"{provider.name}: {type(e).__name__}: {e}") from None
        resp = UpstreamResponse(response.status, response.headers, _no_chunks(), response, time.monotonic())
        resp.chunks = _body_chunks(resp, provider, first_byte_by, deadline)
        return resp

    async def read_error(self, resp: UpstreamResponse) -> bytes:
        try:
            return await resp.read_all(_MAX_ERROR_BODY)
        except (BadGateway, UpstreamTimeout):
            return b""
        finally:
            resp.close()


@functools.lru_cache(maxsize=64)
def _client_timeout(connect: float) -> aiohttp.ClientTimeout:
    """aiohttp's part of the timeouts, one object per connect limit rather than one per call.
    sock_connect only: aiohttp's ``connect`` also counts waiting for a free pooled connection."""
    return aiohttp.ClientTimeout(total=None, sock_connect=connect or None)


def _seconds_left(*deadlines: float | None) -> float | None:
    """Seconds to the nearest deadline; None when there is none."""
    nearest = min((d for d in deadlines if d is not None), default=None)
    return None if nearest is None else max(0.0, nearest - time.monotonic())


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield b""


async def _body_chunks(
    owner: UpstreamResponse, provider: Provider, first_byte_by: float | None, deadline: float | None
) -> AsyncIterator[bytes]:
    t = provider.timeouts
    response = owner.response
    content = response.content
    watch = _ReadWatch(first_byte_by, deadline, t.idle or None)
    try:
        while True:
            if owner.before_read is not None:  # outside the try below: its failures are not the upstream's
                await owner.before_read()
            watch.reading()
            try:
                chunk = await content.readany()
            except asyncio.CancelledError:
                why = watch.fired_for()
                if why is None:
                    raise
                if why == "total":
                    raise UpstreamTimeout(f"{provider.name} did not finish within {t.total:g}s") from None
                if why == "first":
                    raise UpstreamTimeout(f"{provider.name} sent no data within {t.first_byte:g}s") from None
                raise UpstreamTimeout(f"{provider.name} stalled mid-stream for {t.idle:g}s") from None
            except aiohttp.ClientPayloadError as e:
                raise BadGateway(f"{provider.name} broke off the response: {e}") from None
            except aiohttp.ClientError as e:
                raise BadGateway(f"{provider.name}: {type(e).__name__}: {e}") from None
            finally:
                watch.held()
            if not chunk:
                return
            yield chunk
    finally:
        watch.stop()
        # read to the end: the connection goes back to the pool; otherwise it is dropped, not left reading
        response.release() if content.at_eof() else response.close()


class _ReadWatch:
    """The first-byte, idle and total timeouts of one body read, with one timer per stream rather than
    an ``asyncio.timeout`` armed and cancelled around every chunk: a chunk only notes the time its read
    began; the timer, when it comes due, checks whether the read under way has waited too long (then it
    cancels the reading task, like ``asyncio.timeout``) or sets itself for when it could have.
    The time the reader holds a chunk (writing it to the client) counts for none of the limits, except
    that a read begun after the total deadline fails as soon as it would wait."""

    __slots__ = ("first_by", "deadline", "idle", "since", "first", "fired", "_task", "_cancelling", "_timer", "_loop")

    def __init__(self, first_by: float | None, deadline: float | None, idle: float | None) -> None:
        self.first_by, self.deadline, self.idle = first_by, deadline, idle
        self.since: float | None = None  # monotonic time the read under way began; None between reads
        self.first = True
        self.fired: str | None = None
        self._task: asyncio.Task | None = None
        self._cancelling = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def reading(self) -> None:
        now = time.monotonic()
        self.since = now
        if self._task is None:  # the first read: the task that reads
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            self._cancelling = self._task.cancelling() if self._task is not None else 0
        if self.deadline is not None and now >= self.deadline:
            self._set(now, now)
        elif self._timer is None:  # none pending: no limit applied when it was last looked at
            self._arm(now)

    def held(self) -> None:
        self.since = None
        if self.first:  # the first-byte limit is over: the timer may be set for later than an idle one
            self.first = False
            if self._timer is not None:
                self._arm(time.monotonic())

    def fired_for(self) -> str | None:
        """Why the watch cancelled the read (``first``, ``idle``, ``total``), or None when it did not."""
        if self.fired is None or self._task is None or self._task.uncancel() > self._cancelling:
            return None
        return self.fired

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _limit(self) -> tuple[float | None, str]:
        """When the read under way times out, and which limit that is."""
        assert self.since is not None
        until = self.first_by if self.first else (self.since + self.idle if self.idle else None)
        if self.deadline is not None and (until is None or self.deadline <= until):
            return self.deadline, "total"
        return until, "first" if self.first else "idle"

    def _arm(self, now: float) -> None:
        if self.since is not None:
            when, _ = self._limit()
        else:  # between reads: look again no sooner than the next read could time out
            ahead = [w for w in (now + self.idle if self.idle else None, self.deadline) if w is not None and w > now]
            when = min(ahead) if ahead else None
        if when is not None:
            self._set(when, now)

    def _set(self, when: float, now: float) -> None:
        self.stop()
        assert self._loop is not None
        self._timer = self._loop.call_later(max(0.0, when - now), self._check)

    def _check(self) -> None:
        self._timer = None
        task = self._task
        if task is None or task.done() or self.fired is not None:
            return
        now = time.monotonic()
        if self.since is not None:
            when, why = self._limit()
            if when is not None and now >= when:
                self.fired = why
                task.cancel()
                return
        self._arm(now)


_LIMIT_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")


def limit_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream's rate-limit and retry headers, passed on to the client under the same names."""
    return {
        low: value for name, value in headers.items()
        if (low := name.lower()) in ("retry-after", "retry-after-ms") or low.startswith(_LIMIT_PREFIXES)
    }


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds an upstream asked us to wait: ``retry-after-ms``, or ``Retry-After`` as seconds or an HTTP date."""
    ms = _number(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return max(0.0, value) if value is not None and math.isfinite(value) else None
