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
from .upstream_post import REDIRECTS, PooledPost, PooledResponse, request_head, supported, target

_MAX_ERROR_BODY = 64 * 1024


class ConnectFailed(BadGateway):
    """The upstream could not be reached at all (refused, unresolvable, TLS failure): the whole provider is at fault."""


@dataclass(slots=True)
class UpstreamResponse:
    """An upstream's answer: status and headers, and the body, read from the network under the exchange's
    timeouts as ``chunks`` (a stream, or a wrapper such as the body log) or whole (``read_all``). Read to
    its end, the connection goes back to the pool; otherwise it is dropped, not left reading."""

    status: int
    headers: Mapping[str, str]
    chunks: AsyncIterator[bytes]
    response: aiohttp.ClientResponse | PooledResponse | None  # None: answered in process (the demo provider)
    opened_at: float  # monotonic time the headers arrived
    # awaited before each read of the body from the network: a streaming reader writes what it has
    # made of the data so far in one go there, rather than one write per event
    before_read: Callable[[], Awaitable[None]] | None = None
    provider: Provider | None = None  # whose timeouts and name the body's errors carry (None: the demo provider)
    watch: _ReadWatch | None = None  # the exchange's timeouts, carried on from the wait for the headers
    # the generator open() put in ``chunks``: while ``chunks`` is still it (nobody wrapped or replaced it),
    # read_all reads the network directly, without a generator step per chunk
    network_chunks: AsyncIterator[bytes] | None = None

    async def read_all(self, limit: int) -> bytes:
        """The whole body (what is left of it), or BadGateway once it passes ``limit`` bytes."""
        if self.network_chunks is not None and self.chunks is self.network_chunks:
            self.chunks, self.network_chunks = _NO_CHUNKS, None  # the unused generator goes, and its hold on self
            return await self._read_whole(limit)
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

    async def read_chunks(self) -> AsyncIterator[bytes]:
        """The body from the network, chunk by chunk as it comes."""
        assert self.response is not None and self.watch is not None
        content, watch = self.response.content, self.watch
        try:
            while True:
                if self.before_read is not None:  # outside the try below: its failures are not the upstream's
                    await self.before_read()
                watch.reading()
                try:
                    chunk = await content.readany()
                except (asyncio.CancelledError, aiohttp.ClientError) as e:
                    raise self._failure(e) from None
                finally:
                    watch.held()
                if not chunk:
                    return
                yield chunk
        finally:
            self._done()

    async def _read_whole(self, limit: int) -> bytes:
        assert self.response is not None and self.watch is not None
        content, watch = self.response.content, self.watch
        parts, size = [], 0
        try:
            while True:
                try:
                    chunk = content.read_nowait()  # what has come already: taking it waits for nothing, so no timer
                    if chunk:
                        watch.first = False  # the first bytes came: from here on, idle applies
                    elif not content.at_eof():
                        watch.reading()
                        try:
                            chunk = await content.readany()
                        finally:
                            watch.held()
                except (asyncio.CancelledError, aiohttp.ClientError) as e:
                    raise self._failure(e) from None
                if not chunk:
                    return parts[0] if len(parts) == 1 else b"".join(parts)
                parts.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise BadGateway(f"upstream response is larger than {limit} bytes")
        finally:
            self._done()

    def _failure(self, e: BaseException) -> BaseException:
        """What a failed read raises: the timeout that cancelled it, the upstream's fault, or (a cancellation
        from elsewhere) the error itself."""
        assert self.provider is not None and self.watch is not None
        name, t = self.provider.name, self.provider.timeouts
        if isinstance(e, aiohttp.ClientPayloadError):
            return BadGateway(f"{name} broke off the response: {e}")
        if isinstance(e, aiohttp.ClientError):
            return BadGateway(f"{name}: {type(e).__name__}: {e}")
        why = self.watch.fired_for()
        if why is None:
            return e
        if why == "total":
            return UpstreamTimeout(f"{name} did not finish within {t.total:g}s")
        if why == "first":
            return UpstreamTimeout(f"{name} sent no data within {t.first_byte:g}s")
        return UpstreamTimeout(f"{name} stalled mid-stream for {t.idle:g}s")

    def _done(self) -> None:
        assert self.response is not None and self.watch is not None
        self.watch.stop()
        self.response.release() if self.response.content.at_eof() else self.response.close()


class UpstreamClient:
    """Owns the shared ClientSession (keep-alive pool); one per worker."""

    def __init__(self, limit_per_host: int = 0) -> None:  # 0: no cap; every open stream holds a connection
        self._limit_per_host = limit_per_host
        self._session: aiohttp.ClientSession | None = None
        self._pooled: PooledPost | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the session's, known so a call need not ask for it

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._loop = asyncio.get_running_loop()
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

    @property
    def pooled(self) -> PooledPost | None:
        """The pooled POST on the session's connector; None where this aiohttp lacks what it needs."""
        if self._pooled is None and supported():
            self._pooled = PooledPost(self.session)
        return self._pooled

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = self._pooled = self._loop = None

    async def open(self, call: UpstreamCall, provider: Provider) -> UpstreamResponse:
        """Send the request and wait for the headers; the body is read through ``chunks`` or ``read_all``."""
        if provider.protocol == "demo":  # served in process: no connection, nothing to time out
            status, headers, chunks = demo_answer(call)
            return UpstreamResponse(status, headers, chunks, None, time.monotonic())
        t = provider.timeouts
        sent = time.monotonic()
        # one watch for the whole exchange: the headers must come within first_byte too, and all within total
        watch = _ReadWatch(sent + t.first_byte if t.first_byte else None, sent + t.total if t.total else None, t.idle or None,
                           self._loop)
        timeout = _client_timeout(t.connect)
        data = orjson.dumps(call.body) if call.method != "GET" else None
        watch.reading()
        try:
            response = await self._send(call, data, timeout, provider)
        except asyncio.CancelledError:
            why = watch.fired_for()
            if why is None:
                raise
            if why == "total":
                raise UpstreamTimeout(f"{provider.name} did not finish within {t.total:g}s") from None
            raise UpstreamTimeout(f"{provider.name} sent no response headers within {t.first_byte:g}s") from None
        # aiohttp's own timeouts are TimeoutErrors too: they must be told apart first
        except aiohttp.ServerTimeoutError:
            raise UpstreamTimeout(f"{provider.name}: connecting took longer than {t.connect:g}s") from None
        except TimeoutError:  # none other is known to come out of aiohttp; reported as it was before the watch
            if watch.deadline and time.monotonic() >= watch.deadline:
                raise UpstreamTimeout(f"{provider.name} did not finish within {t.total:g}s") from None
            raise UpstreamTimeout(f"{provider.name} sent no response headers within {t.first_byte:g}s") from None
        except aiohttp.ClientConnectorError as e:
            why = e.os_error.strerror or str(e.os_error) or type(e).__name__
            raise ConnectFailed(f"{provider.name} is unreachable ({why})") from None
        except aiohttp.ClientError as e:
            raise BadGateway(f"{provider.name}: {type(e).__name__}: {e}") from None
        finally:
            watch.pause()
        resp = UpstreamResponse(response.status, response.headers, _NO_CHUNKS, response, time.monotonic(), provider=provider, watch=watch)
        resp.chunks = resp.network_chunks = resp.read_chunks()
        return resp

    async def _send(self, call: UpstreamCall, data: bytes | None, timeout: aiohttp.ClientTimeout,
                    provider: Provider) -> aiohttp.ClientResponse | PooledResponse:
        """The answer's head: through :class:`PooledPost` when the call has its one shape, else the session."""
        if data is not None and not provider.proxy and call.method == "POST" and self.pooled is not None \
                and (to := target(call.url)) is not None and (head := request_head(to.request_line, call.headers, len(data))) is not None:
            response = await self.pooled.send(to, head, data, timeout, provider.verify_tls)
            if response.status not in REDIRECTS:
                return response
            response.close()  # the session follows redirects, as it always did
        kwargs: dict = {}
        if provider.proxy:
            kwargs["proxy"] = provider.proxy
        if not provider.verify_tls:
            kwargs["ssl"] = False
        return await self.session.request(call.method, call.url, data=data, headers=call.headers, timeout=timeout, **kwargs)

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


class _NoChunks:
    """An empty body: one shared object, where an async generator would be one per response."""

    def __aiter__(self) -> _NoChunks:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration


_NO_CHUNKS = _NoChunks()


class _ReadWatch:
    """The first-byte, idle and total timeouts of one exchange (the wait for the headers, then the body's
    reads), with one timer rather than an ``asyncio.timeout`` armed and cancelled around every wait: a read
    only notes the time it began; the timer, when it comes due, checks whether the read under way has waited
    too long (then it cancels the reading task, like ``asyncio.timeout``) or sets itself for when it could have.
    The time the reader holds a chunk (writing it to the client) counts for none of the limits, except
    that a read begun after the total deadline fails as soon as it would wait."""

    __slots__ = ("first_by", "deadline", "idle", "since", "first", "fired", "_task", "_cancelling", "_timer", "_loop")

    def __init__(self, first_by: float | None, deadline: float | None, idle: float | None,
                 loop: asyncio.AbstractEventLoop | None) -> None:
        self.first_by, self.deadline, self.idle = first_by, deadline, idle
        self.since: float | None = None  # monotonic time the read under way began; None between reads
        self.first = True
        self.fired: str | None = None
        self._task: asyncio.Task | None = None
        self._cancelling = 0
        self._timer: asyncio.TimerHandle | None = None
        # given, not asked for: on Python 3.11 each get_running_loop() is a getpid() system call
        self._loop = loop or asyncio.get_running_loop()

    def reading(self) -> None:
        now = time.monotonic()
        self.since = now
        if self._task is None:  # the first read: the task that reads
            self._task = asyncio.current_task(self._loop)
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

    def pause(self) -> None:
        """The headers came: nothing is timed until the body's first read, which another task may make.
        That read is still held to the first-byte limit."""
        self.stop()
        self.since = None
        self._task = None

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
_RETRY_HEADERS = ("retry-after", "retry-after-ms")
_LIMIT_INITIALS = "xXaArR"  # the first letters of the names above, in either case


def limit_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream's rate-limit and retry headers, passed on to the client under the same names.

    Only a name beginning with x, a or r, in either case, can be one (no other character lowercases to
    those), so the rest are passed over without lowercasing them."""
    found = {}
    for name, value in headers.items():
        if name[:1] in _LIMIT_INITIALS and ((low := name.lower()) in _RETRY_HEADERS or low.startswith(_LIMIT_PREFIXES)):
            found[low] = value
    return found


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
