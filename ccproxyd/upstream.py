"""The one pooled HTTP client every upstream call goes through, with the four timeouts.

``connect`` bounds the TCP/TLS connect, ``first_byte`` the wait for response
headers and then for the first body bytes, ``idle`` every later gap between
body chunks, ``total`` the whole exchange. 0 disables one.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import AsyncIterator

import aiohttp

from .config import Provider
from .errors import BadGateway, UpstreamTimeout
from .protocols.base import UpstreamCall

import orjson

_MAX_ERROR_BODY = 64 * 1024


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: "aiohttp.typedefs.LooseHeaders"
    chunks: AsyncIterator[bytes]
    response: aiohttp.ClientResponse
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
        self.response.close()


class UpstreamClient:
    """Owns the shared ClientSession (keep-alive, per-host limit); one per worker."""

    def __init__(self, limit_per_host: int = 256) -> None:
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
        t = provider.timeouts
        deadline = time.monotonic() + t.total if t.total else None
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect or None, connect=t.connect or None)
        kwargs = {}
        if provider.proxy:
            kwargs["proxy"] = provider.proxy
        if not provider.verify_tls:
            kwargs["ssl"] = False
        data = orjson.dumps(call.body)
        try:
            async with asyncio.timeout(_budget(t.first_byte, deadline)):
                response = await self.session.request(call.method, call.url, data=data, headers=call.headers, timeout=timeout, **kwargs)
        except TimeoutError:
            raise UpstreamTimeout(f"{provider.name} sent no response headers within {t.first_byte:g}s") from None
        except aiohttp.ServerTimeoutError:
            raise UpstreamTimeout(f"{provider.name}: connecting took longer than {t.connect:g}s") from None
        except aiohttp.ClientConnectorError as e:
            raise BadGateway(f"{provider.name} is unreachable ({e.os_error.strerror or e.os_error})") from None
        except aiohttp.ClientError as e:
            raise BadGateway(f"{provider.name}: {type(e).__name__}: {e}") from None
        return UpstreamResponse(response.status, response.headers, _body_chunks(response, provider, deadline), response, time.monotonic())

    async def read_error(self, resp: UpstreamResponse) -> bytes:
        try:
            return await resp.read_all(_MAX_ERROR_BODY)
        except (BadGateway, UpstreamTimeout):
            return b""
        finally:
            resp.close()


def _budget(limit: float, deadline: float | None) -> float | None:
    remaining = deadline - time.monotonic() if deadline else None
    if limit and remaining is not None:
        return max(0.0, min(limit, remaining))
    return limit or remaining


async def _body_chunks(response: aiohttp.ClientResponse, provider: Provider, deadline: float | None) -> AsyncIterator[bytes]:
    t = provider.timeouts
    first = True
    try:
        while True:
            limit = t.first_byte if first else t.idle
            try:
                async with asyncio.timeout(_budget(limit, deadline)):
                    chunk = await response.content.readany()
            except TimeoutError:
                if deadline and time.monotonic() >= deadline:
                    raise UpstreamTimeout(f"{provider.name} did not finish within {t.total:g}s") from None
                what = "sent no data" if first else "stalled mid-stream"
                raise UpstreamTimeout(f"{provider.name} {what} for {limit:g}s") from None
            except aiohttp.ClientPayloadError as e:
                raise BadGateway(f"{provider.name} broke off the response: {e}") from None
            except aiohttp.ClientError as e:
                raise BadGateway(f"{provider.name}: {type(e).__name__}: {e}") from None
            if not chunk:
                return
            first = False
            yield chunk
    finally:
        response.release() if response.content.at_eof() else response.close()
