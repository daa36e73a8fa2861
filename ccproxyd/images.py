"""Fetching image URLs for upstreams that only take inline data (Gemini, Ollama).

Bounded in size and time, and refusing loopback, private and link-local
addresses unless ``server.image_fetch_allow_private`` says otherwise, so a
client cannot use ccproxyd to reach hosts on its network.

Memory is bounded too: one request's images together may not exceed
``server.image_fetch_max_total_bytes`` (checked against Content-Length
before reading, and while reading, so no more than that is ever fetched),
at most ``server.image_fetch_concurrency`` downloads run at once in the
process, and each image is base64-encoded as its chunks arrive, so only its
encoded form is held, never the raw bytes beside it.
"""

from __future__ import annotations

import asyncio
import binascii
import dataclasses
import ipaddress
import socket
import weakref
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from . import ir
from .config import Server
from .errors import ClientError, TooLarge
from .protocols.fields import split_data_url


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _is_public(address: str) -> bool:
    """Globally routable, and so is any IPv4 address an IPv6 one carries (mapped, 6to4, NAT64)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and any(ip in net for net in _NAT64):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not _is_public(str(embedded)):
            return False
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


async def _checked_address(host: str, port: int) -> str:
    """The address to connect to, once every address ``host`` resolves to proved public."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ClientError(f"image URL host {host!r} cannot be resolved: {e.strerror or e}") from None
    if not infos:
        raise ClientError(f"image URL host {host!r} cannot be resolved")
    for info in infos:
        if not _is_public(info[4][0]):
            raise ClientError(f"image URL host {host!r} resolves to a non-public address; refused")
    return infos[0][4][0]


def _pinned(url: str, host: str, port: int | None, address: str) -> tuple[str, dict]:
    """``url`` aimed at the checked address, so a second lookup (DNS rebinding) cannot redirect it;
    the Host header and the TLS name stay the URL's own."""
    netloc_host = f"[{host}]" if ":" in host else host
    headers = {"Host": f"{netloc_host}:{port}" if port else netloc_host}
    return str(URL(url).with_host(address)), {"headers": headers, "server_hostname": host}


class ImageBudget:
    """The image bytes one request may still fetch."""

    def __init__(self, total: int) -> None:
        self.total = self.left = total

    def refuse(self, url: str) -> TooLarge:
        return TooLarge(f"the images of this request add up to more than {self.total} bytes (server.image_fetch_max_total_bytes); "
                        f"refused at {url[:80]!r}")


_SLOTS: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[int, asyncio.Semaphore]]" = weakref.WeakKeyDictionary()


def _fetch_slots(count: int) -> asyncio.Semaphore:
    """The process's download slots (one semaphore per event loop; a reload with a new count makes a new one)."""
    loop = asyncio.get_running_loop()
    held = _SLOTS.get(loop)
    if held is None or held[0] != count:
        held = _SLOTS[loop] = (count, asyncio.Semaphore(count))
    return held[1]


async def _encoded_body(resp: aiohttp.ClientResponse, url: str, limit: int, budget: ImageBudget) -> bytearray:
    """The body base64-encoded chunk by chunk, stopped as soon as it passes ``limit`` or the budget."""
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise ClientError(f"image at {url[:80]!r} is larger than {limit} bytes")
    if declared is not None and declared > budget.left:
        raise budget.refuse(url)
    encoded, carry, size = bytearray(), b"", 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise ClientError(f"image at {url[:80]!r} is larger than {limit} bytes")
        if size > budget.left:
            raise budget.refuse(url)
        data = carry + chunk if carry else chunk
        whole = len(data) - len(data) % 3  # base64 encodes 3 bytes at a time; the rest waits for the next chunk
        encoded += binascii.b2a_base64(memoryview(data)[:whole], newline=False)
        carry = data[whole:]
    encoded += binascii.b2a_base64(carry, newline=False)
    budget.left -= size
    return encoded


async def fetch_image(url: str, session: aiohttp.ClientSession, server: Server, budget: ImageBudget | None = None) -> ir.Image:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientError(f"image URL must be http(s) or a data: URL, got {url[:80]!r}")
    try:
        port = parts.port
    except ValueError:
        raise ClientError(f"image URL has an invalid port: {url[:80]!r}") from None
    target, pinning = url, {}
    if not server.image_fetch_allow_private:
        address = await _checked_address(parts.hostname, port or (443 if parts.scheme == "https" else 80))
        target, pinning = _pinned(url, parts.hostname, port, address)
    budget = budget or ImageBudget(server.image_fetch_max_total_bytes)
    if budget.left <= 0:
        raise budget.refuse(url)
    try:
        async with _fetch_slots(server.image_fetch_concurrency), asyncio.timeout(server.image_fetch_timeout):
            async with session.get(target, allow_redirects=False, **pinning) as resp:
                if resp.status != 200:
                    raise ClientError(f"image URL {url[:80]!r} answered HTTP {resp.status}")
                encoded = await _encoded_body(resp, url, server.image_fetch_max_bytes, budget)
                media_type = resp.content_type if resp.content_type.startswith("image/") else "image/png"
    except TimeoutError:
        raise ClientError(f"image URL {url[:80]!r} did not answer within {server.image_fetch_timeout:g}s") from None
    except (aiohttp.ClientError, ValueError) as e:
        raise ClientError(f"image URL {url[:80]!r} could not be fetched: {e}") from None
    return ir.Image(media_type=media_type, data=encoded.decode("ascii"))


async def inline_images(req: ir.Request, upstream: "object", server: Server) -> ir.Request:
    """A copy of ``req`` with every http(s) image fetched and inlined (tool-result images too)."""
    if not any(_has_url_image(m.parts) for m in req.messages):
        return req
    session = upstream.session  # type: ignore[attr-defined]
    cache: dict[str, ir.Image] = {}
    budget = ImageBudget(server.image_fetch_max_total_bytes)
    messages = [ir.Message(m.role, await _inline(m.parts, session, server, cache, budget)) if _has_url_image(m.parts) else m
                for m in req.messages]
    return dataclasses.replace(req, messages=messages)


async def _inline(parts: list[ir.Part], session: aiohttp.ClientSession, server: Server, cache: dict[str, ir.Image],
                  budget: ImageBudget) -> list[ir.Part]:
    """A module function, not a recursive closure: a closure that calls itself is a reference cycle,
    which would keep every fetched image in memory until the next garbage collection."""
    out: list[ir.Part] = []
    for p in parts:
        if isinstance(p, ir.Image) and p.data is None and p.url:
            inline_data = split_data_url(p.url)
            if inline_data:
                p = ir.Image(media_type=inline_data[0], data=inline_data[1])
            else:
                if p.url not in cache:
                    cache[p.url] = await fetch_image(p.url, session, server, budget)
                p = cache[p.url]
        elif isinstance(p, ir.ToolResult) and _has_url_image(p.content):
            p = dataclasses.replace(p, content=await _inline(p.content, session, server, cache, budget))
        out.append(p)
    return out


def _has_url_image(parts: list[ir.Part]) -> bool:
    return any(
        (isinstance(p, ir.Image) and p.data is None and bool(p.url)) or (isinstance(p, ir.ToolResult) and _has_url_image(p.content))
        for p in parts
    )
