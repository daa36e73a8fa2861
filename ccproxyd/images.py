"""Fetching image URLs for upstreams that only take inline data (Gemini, Ollama).

Bounded in size and time, and refusing loopback, private and link-local
addresses unless ``server.image_fetch_allow_private`` says otherwise, so a
client cannot use ccproxyd to reach hosts on its network.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import ipaddress
import socket
from urllib.parse import urlsplit

import aiohttp

from . import ir
from .config import Server
from .errors import ClientError
from .protocols.fields import split_data_url


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_global and not ip.is_multicast


async def _check_host(host: str, port: int, allow_private: bool) -> None:
    if allow_private:
        return
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ClientError(f"image URL host {host!r} cannot be resolved: {e.strerror or e}") from None
    for info in infos:
        if not _is_public(info[4][0]):
            raise ClientError(f"image URL host {host!r} resolves to a non-public address; refused")


async def fetch_image(url: str, session: aiohttp.ClientSession, server: Server) -> ir.Image:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientError(f"image URL must be http(s) or a data: URL, got {url[:80]!r}")
    await _check_host(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), server.image_fetch_allow_private)
    limit = server.image_fetch_max_bytes
    try:
        async with asyncio.timeout(server.image_fetch_timeout):
            async with session.get(url, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise ClientError(f"image URL {url[:80]!r} answered HTTP {resp.status}")
                data = b""
                async for chunk in resp.content.iter_chunked(65536):
                    data += chunk
                    if len(data) > limit:
                        raise ClientError(f"image at {url[:80]!r} is larger than {limit} bytes")
                media_type = resp.content_type if resp.content_type.startswith("image/") else "image/png"
    except TimeoutError:
        raise ClientError(f"image URL {url[:80]!r} did not answer within {server.image_fetch_timeout:g}s") from None
    except aiohttp.ClientError as e:
        raise ClientError(f"image URL {url[:80]!r} could not be fetched: {e}") from None
    return ir.Image(media_type=media_type, data=base64.b64encode(data).decode())


async def inline_images(req: ir.Request, upstream: "object", server: Server) -> ir.Request:
    """A copy of ``req`` with every http(s) image fetched and inlined (tool-result images too)."""
    if not any(_has_url_image(m.parts) for m in req.messages):
        return req
    session = upstream.session  # type: ignore[attr-defined]
    cache: dict[str, ir.Image] = {}

    async def inline(parts: list[ir.Part]) -> list[ir.Part]:
        out: list[ir.Part] = []
        for p in parts:
            if isinstance(p, ir.Image) and p.data is None and p.url:
                inline_data = split_data_url(p.url)
                if inline_data:
                    p = ir.Image(media_type=inline_data[0], data=inline_data[1])
                else:
                    if p.url not in cache:
                        cache[p.url] = await fetch_image(p.url, session, server)
                    p = cache[p.url]
            elif isinstance(p, ir.ToolResult) and _has_url_image(p.content):
                p = dataclasses.replace(p, content=await inline(p.content))
            out.append(p)
        return out

    messages = [ir.Message(m.role, await inline(m.parts)) if _has_url_image(m.parts) else m for m in req.messages]
    return dataclasses.replace(req, messages=messages)


def _has_url_image(parts: list[ir.Part]) -> bool:
    return any(
        (isinstance(p, ir.Image) and p.data is None and bool(p.url)) or (isinstance(p, ir.ToolResult) and _has_url_image(p.content))
        for p in parts
    )
