"""A client's request body as JSON: refused early when it is too large or nests too deep, read in one call
when its size is known."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestPayloadError

from .errors import ClientError, TooLarge


async def read_json_body(request: web.Request, limit: int, max_depth: int = 64) -> dict[str, Any]:
    """The body as a JSON object, refused early when it is over ``limit`` bytes and when it
    nests deeper than ``max_depth`` (such values could not even be encoded for the upstream)."""
    length = request.content_length
    if length is not None and length > limit:
        raise TooLarge(f"request body is {length} bytes; the limit is {limit}")
    try:
        if length is not None and "Content-Encoding" not in request.headers:  # the usual body: one call, its size known
            raw = await request.content.readexactly(length) if length else b""  # (aiohttp's empty body has nothing to read)
        else:  # chunked or compressed: its size shows only as it comes
            raw = await _read_limited(request.content, limit)
    except (HttpProcessingError, RequestPayloadError, asyncio.IncompleteReadError):
        raise ClientError("request body could not be read: broken chunked framing or content encoding") from None
    if not raw or raw.isspace():
        raise ClientError("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ClientError(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ClientError(f"request body must be a JSON object, got {type(body).__name__}")
    # fewer brackets cannot nest that deep: counting them is cheaper than the walk on a short body; on a long one
    # (a coding agent's, 80 KB) counting costs half as much as the walk, which nearly always follows
    if (len(raw) > _COUNT_BRACKETS_UP_TO or raw.count(b"[") + raw.count(b"{") > max_depth) and _nests_deeper(body, max_depth):
        raise ClientError(f"request body nests objects and arrays deeper than {max_depth} levels")
    return body


_COUNT_BRACKETS_UP_TO = 4096  # bytes of body


async def _read_limited(content: StreamReader, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _nests_deeper(value: dict[str, Any] | list[Any], limit: int) -> bool:
    """Whether containers nest more than ``limit`` deep; level by level, so depth costs no recursion.
    (It visits every object and array of the body: exact type checks, which is all orjson makes, and one
    list comprehension per level rather than a stack entry per container.)"""
    level, depth = [value], 1
    while level:
        if depth > limit:
            return True
        depth += 1
        level = [child for node in level for child in (node.values() if type(node) is dict else node)
                 if type(child) is dict or type(child) is list]
    return False
