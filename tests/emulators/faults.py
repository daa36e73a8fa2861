"""Upstreams that fail the ways real ones do, speaking OpenAI Chat Completions.

* :func:`refused_url` — a port nobody listens on: connections are refused.
* :class:`UnacceptingListener` — a port that never completes the TCP handshake: connects hang.
* :class:`FaultyOpenAIEmulator` — an :class:`OpenAIEmulator` whose replies may also be
  :class:`Fault` scripts: stall mid-stream, or close the connection mid-stream. It
  answers per upstream key when ``by_key`` says so (a rate-limited key beside a good
  one), and it notices when the caller goes away (``disconnected``), which is how a
  test sees ccproxyd drop an upstream request its client abandoned.

A 429 with ``Retry-After``, a 500 that recovers and a hang before the headers are
plain :class:`Reply` scripts (``error_status``, ``retry_after``, ``headers_delay``).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import socket
import time
from dataclasses import dataclass

from aiohttp import web

from .base import Reply
from .openai import OpenAIEmulator

_REQUEST_KEY: contextvars.ContextVar[str] = contextvars.ContextVar("upstream_key", default="")


@dataclass
class Fault(Reply):
    """A streamed reply that goes wrong after ``after`` frames (the role chunk is the first, then
    the content chunks): ``stall`` sends nothing more and keeps the connection open, ``close``
    drops the connection without finishing the stream. ``after=0``: right after the headers."""

    after: int = 2
    action: str = "stall"  # stall | close


class FaultyOpenAIEmulator(OpenAIEmulator):
    def __init__(self) -> None:
        super().__init__()
        self.by_key: dict[str, Reply] = {}  # upstream key → the reply every request with it gets
        self.in_flight = 0
        self.peers: list[int] = []  # the caller's port per request: one port for many requests is keep-alive
        self.disconnected = asyncio.Event()  # a request ended because the caller closed the connection

    def keys_seen(self) -> list[str]:
        """The upstream key of every request received, in order."""
        return [r.headers.get("authorization", "").removeprefix("Bearer ") for r in self.received]

    def next_reply(self) -> Reply:
        key = _REQUEST_KEY.get()
        return self.by_key[key] if key in self.by_key else super().next_reply()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        _REQUEST_KEY.set(request.headers.get("authorization", "").removeprefix("Bearer "))  # this handler's task only
        self.in_flight += 1
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.peers.append(peer[1] if peer else 0)
        try:
            return await super().chat(request)
        except (asyncio.CancelledError, ConnectionResetError):
            # aiohttp cancels a handler whose connection closed; writing to it fails
            self.disconnected.set()
            raise
        finally:
            self.in_flight -= 1

    async def stream(self, request: web.Request, body: dict, reply: Reply) -> web.StreamResponse:
        if not isinstance(reply, Fault):
            return await super().stream(request, body, reply)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"})
        await resp.prepare(request)
        base = {"id": "chatcmpl-fault", "object": "chat.completion.chunk", "created": int(time.time()), "model": body["model"]}

        deltas = [{"role": "assistant", "content": ""}] + [{"content": piece} for piece in reply.text_pieces()]
        for delta in deltas[: reply.after]:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await self.pause(reply)
        if reply.action == "close":
            assert request.transport is not None
            request.transport.abort()  # no terminating chunk, no [DONE]: the connection just drops
            return resp
        await asyncio.Event().wait()  # the stall: nothing more is sent until the caller gives up
        return resp


def refused_url() -> str:
    """A base URL on 127.0.0.1 whose port refuses connections (bound, then released unused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class UnacceptingListener:
    """A listening port whose accept queue is kept full, so a new TCP handshake never completes.

    Linux drops a SYN when the listener's accept queue is full; the connecting
    side keeps retransmitting, which is what a black-holed host looks like.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers: list[socket.socket] = []
        for _ in range(3):  # a backlog of 0 still queues one; fill it and then some
            filler = socket.socket()
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fillers.append(filler)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        for s in [*self.fillers, self.sock]:
            s.close()
