"""What every emulator shares: a neutral script of what the "model" says, and a request log.

Each protocol emulator renders a :class:`Reply` in its own wire format (JSON
body or stream) exactly as its provider documents it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict


@dataclass
class ToolCallScript:
    name: str
    arguments: dict[str, Any]
    id: str | None = None  # None: the emulator invents one the way its provider does


@dataclass
class Reply:
    """What the emulated model answers. ``finish`` is neutral: stop | length | tool_calls | content_filter."""

    text: str = "Hello from the emulator."
    reasoning: str = ""
    reasoning_signature: str | None = None
    tool_calls: list[ToolCallScript] = field(default_factory=list)
    finish: str | None = None  # None: tool_calls if there are calls, else stop
    input_tokens: int = 21
    output_tokens: int = 9
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    error_status: int | None = None  # answer with the protocol's error shape instead
    error_message: str = "emulated failure"
    retry_after: str | None = None
    chunks: int = 3  # how many pieces the text is streamed in (at least)
    chunk_delay: float = 0.0  # seconds between stream frames
    error_after_start: bool = False  # send the protocol's mid-stream error after the first frames
    headers_delay: float = 0.0  # seconds before the response headers (a hanging upstream)

    @property
    def finish_reason(self) -> str:
        return self.finish or ("tool_calls" if self.tool_calls else "stop")

    def text_pieces(self) -> list[str]:
        if not self.text:
            return []
        n = max(1, min(self.chunks, len(self.text)))
        size = -(-len(self.text) // n)
        return [self.text[i : i + size] for i in range(0, len(self.text), size)]


@dataclass
class Received:
    path: str
    query: dict[str, str]
    headers: CIMultiDict  # case-insensitive, like HTTP
    body: Any


class Emulator:
    """An aiohttp app with a reply queue (the last reply repeats) and a log of requests."""

    def __init__(self) -> None:
        self.replies: list[Reply] = [Reply()]
        self.received: list[Received] = []
        self.app = web.Application()
        self.request_started = asyncio.Event()

    def script(self, *replies: Reply) -> None:
        self.replies = list(replies) or [Reply()]

    def next_reply(self) -> Reply:
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    async def record(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        self.received.append(Received(request.path, dict(request.query), CIMultiDict(request.headers), body))
        self.request_started.set()
        return body

    @property
    def last(self) -> Received:
        return self.received[-1]

    @staticmethod
    async def hold_headers(reply: Reply) -> None:
        if reply.headers_delay:
            await asyncio.sleep(reply.headers_delay)  # emulated hang before answering, not a test wait

    @staticmethod
    async def pause(reply: Reply) -> None:
        if reply.chunk_delay:
            await asyncio.sleep(reply.chunk_delay)  # emulated model latency between frames, not a test wait
