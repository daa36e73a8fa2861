"""The one pooled HTTP client every upstream call goes through, with the four timeouts.

Per provider, in seconds, 0 disabling one: ``connect`` bounds the TCP/TLS
connect; ``first_byte`` the wait from sending the request to the first body
bytes (the response headers must come within it too); ``idle`` every later gap
between body chunks; ``total`` the whole exchange.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import AsyncIterator, Mapping

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
        # sock_connect only: aiohttp's ``connect`` also counts waiting for a free pooled connection
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect or None)
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
        chunks = _body_chunks(response, provider, first_byte_by, deadline)
        return UpstreamResponse(response.status, response.headers, chunks, response, time.monotonic())

    async def read_error(self, resp: UpstreamResponse) -> bytes:
        try:
            return await resp.read_all(_MAX_ERROR_BODY)
        except (BadGateway, UpstreamTimeout):
            return b""
        finally:
            resp.close()


def _seconds_left(*deadlines: float | None) -> float | None:
    """Seconds to the nearest deadline; None when there is none."""
    nearest = min((d for d in deadlines if d is not None), default=None)
    return None if nearest is None else max(0.0, nearest - time.monotonic())


async def _body_chunks(
    response: aiohttp.ClientResponse, provider: Provider, first_byte_by: float | None, deadline: float | None
) -> AsyncIterator[bytes]:
    t = provider.timeouts
    first = True
    try:
        while True:
            wait_until = first_byte_by if first else (time.monotonic() + t.idle if t.idle else None)
            try:
                async with asyncio.timeout(_seconds_left(wait_until, deadline)):
                    chunk = await response.content.readany()
            except TimeoutError:
                if deadline and time.monotonic() >= deadline:
                    raise UpstreamTimeout(f"{provider.name} did not finish within {t.total:g}s") from None
                if first:
                    raise UpstreamTimeout(f"{provider.name} sent no data within {t.first_byte:g}s") from None
                raise UpstreamTimeout(f"{provider.name} stalled mid-stream for {t.idle:g}s") from None
            except aiohttp.ClientPayloadError as e:
                raise BadGateway(f"{provider.name} broke off the response: {e}") from None
            except aiohttp.ClientError as e:
                raise BadGateway(f"{provider.name}: {type(e).__name__}: {e}") from None
            if not chunk:
                return
            first = False
            yield chunk
    finally:
        # read to the end: the connection goes back to the pool; otherwise it is dropped, not left reading
        response.release() if response.content.at_eof() else response.close()


_LIMIT_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")


def limit_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream's rate-limit and retry headers, passed on to the client under the same names."""
    return {
        name.lower(): value for name, value in headers.items()
        if name.lower() in ("retry-after", "retry-after-ms") or name.lower().startswith(_LIMIT_PREFIXES)
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
