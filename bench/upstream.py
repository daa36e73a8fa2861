"""A lean upstream for the benchmark: all four chat protocols, a fixed small reply, a fixed N-chunk stream.

Unlike the test emulators it validates nothing and renders every body once per
model name, so that the emulator costs as little as possible and the same on
the direct and on the proxied path. Shapes follow each provider's reference:

* OpenAI ``POST /v1/chat/completions``: ``chat.completion``; streams of
  ``chat.completion.chunk`` (role first, content deltas, ``finish_reason`` on
  the last choice chunk, a ``choices: []`` usage chunk when
  ``stream_options.include_usage``), then ``data: [DONE]``.
* Anthropic ``POST /v1/messages``: a ``message``; streams of ``message_start``,
  ``content_block_start``, ``content_block_delta`` (``text_delta``) ×N,
  ``content_block_stop``, ``message_delta``, ``message_stop``, each with its
  ``event:`` line.
* Gemini ``POST /v1beta/models/{model}:generateContent`` and
  ``:streamGenerateContent`` (``?alt=sse`` → ``data:`` frames, none → one JSON
  array); ``finishReason`` and the final ``usageMetadata`` on the last frame.
* Ollama ``POST /api/chat``: NDJSON lines unless ``"stream": false``, the last
  one ``done: true`` with ``done_reason`` and the counters.

A stream is exactly N writes, one per content chunk (the opening frames go
with the first, the closing ones with the last). The model name picks the shape
of the reply: one containing ``idle`` streams ``--idle-chunks`` chunks one per
``--idle-interval`` seconds, ``paced`` waits ``--pace-ms`` between chunks,
``compat`` ends its text with a Hermes-style ``<tool_call>`` for compat mode to
parse. ``GET /_bench/stats`` reports the requests served and the most streams
open at once (``POST /_bench/reset`` starts that count again).

Run: ``python -m bench.upstream --port 8001 [--chunks 100]``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from dataclasses import dataclass
from typing import Callable

import orjson
from aiohttp import web

REPLY_TEXT = "Hello from the bench upstream."
INPUT_TOKENS = 12
# the call as a model would stream it: a few tokens at a time, the function name whole
COMPAT_CALL = ("<tool_call>", '{"name": ', '"get_weather", ', '"arguments": ', '{"city": ', '"Paris"}}', "</tool_call>")
JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"
NDJSON_TYPE = "application/x-ndjson"
CREATED_AT = "2025-01-01T00:00:00.000000Z"


@dataclass(frozen=True, slots=True)
class Settings:
    chunks: int = 100
    pace: float = 0.002
    idle_chunks: int = 21
    idle_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class Shape:
    """What one model name answers: its stream pieces and the pause between chunks."""

    pieces: tuple[str, ...]
    delay: float


def shape_for(model: str, settings: Settings) -> Shape:
    if "idle" in model:
        return Shape(_words(settings.idle_chunks), settings.idle_interval)
    pieces = _words(settings.chunks)
    if "compat" in model:
        pieces = pieces[: max(1, settings.chunks - len(COMPAT_CALL))] + COMPAT_CALL
    return Shape(pieces, settings.pace if "paced" in model else 0.0)


def _words(n: int) -> tuple[str, ...]:
    return tuple(f"w{i} " for i in range(max(1, n)))


def _ticks(head: bytes, content: list[bytes], tail: bytes) -> list[bytes]:
    """One write per content frame: the opening frames go with the first, the closing ones with the last."""
    ticks = list(content)
    ticks[0] = head + ticks[0]
    ticks[-1] += tail
    return ticks


def _sse(data: dict, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


# ---------------------------------------------------------------- OpenAI


def _openai_usage(output: int) -> dict:
    return {"prompt_tokens": INPUT_TOKENS, "completion_tokens": output, "total_tokens": INPUT_TOKENS + output}


def openai_body(model: str) -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY_TEXT, "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": _openai_usage(7),
    })


def openai_frames(model: str, shape: Shape, include_usage: bool) -> list[bytes]:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra})

    tail = chunk({}, "stop")
    if include_usage:
        tail += _sse({**base, "choices": [], "usage": _openai_usage(len(shape.pieces))})
    tail += b"data: [DONE]\n\n"
    return _ticks(chunk({"role": "assistant", "content": ""}), [chunk({"content": p}) for p in shape.pieces], tail)


# ---------------------------------------------------------------- Anthropic


def claude_body(model: str) -> bytes:
    return orjson.dumps({
        "id": "msg_bench", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": REPLY_TEXT}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 7},
    })


def claude_frames(model: str, shape: Shape) -> list[bytes]:
    message = {"id": "msg_bench", "type": "message", "role": "assistant", "model": model, "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1}}
    head = _sse({"type": "message_start", "message": message}, "message_start") + _sse(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}, "content_block_start")
    content = [
        _sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}, "content_block_delta")
        for piece in shape.pieces
    ]
    tail = (
        _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
        + _sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(shape.pieces)}}, "message_delta")
        + _sse({"type": "message_stop"}, "message_stop")
    )
    return _ticks(head, content, tail)


# ---------------------------------------------------------------- Gemini


def _gemini_response(model: str, text: str, output: int, last: bool) -> dict:
    candidate: dict = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if last:
        candidate["finishReason"] = "STOP"
    return {
        "candidates": [candidate],
        "usageMetadata": {"promptTokenCount": INPUT_TOKENS, "candidatesTokenCount": output, "totalTokenCount": INPUT_TOKENS + output},
        "modelVersion": model, "responseId": "bench",
    }


def gemini_body(model: str) -> bytes:
    return orjson.dumps(_gemini_response(model, REPLY_TEXT, 7, True))


def gemini_frames(model: str, shape: Shape, sse: bool) -> list[bytes]:
    n = len(shape.pieces)
    responses = [orjson.dumps(_gemini_response(model, piece, i + 1, i == n - 1)) for i, piece in enumerate(shape.pieces)]
    if sse:
        return [b"data: " + r + b"\r\n\r\n" for r in responses]
    # without alt=sse Google streams one JSON array, element by element
    return _ticks(b"[", [(b"" if i == 0 else b",\r\n") + r for i, r in enumerate(responses)], b"]")


# ---------------------------------------------------------------- Ollama


def _ollama_final(model: str, output: int, content: str) -> dict:
    return {
        "model": model, "created_at": CREATED_AT, "message": {"role": "assistant", "content": content}, "done": True,
        "done_reason": "stop", "total_duration": 1_000_000, "load_duration": 10_000, "prompt_eval_count": INPUT_TOKENS,
        "prompt_eval_duration": 100_000, "eval_count": output, "eval_duration": 800_000,
    }


def ollama_body(model: str) -> bytes:
    return orjson.dumps(_ollama_final(model, 7, REPLY_TEXT))


def ollama_frames(model: str, shape: Shape) -> list[bytes]:
    content = [
        orjson.dumps({"model": model, "created_at": CREATED_AT, "message": {"role": "assistant", "content": piece}, "done": False}) + b"\n"
        for piece in shape.pieces
    ]
    return _ticks(b"", content, orjson.dumps(_ollama_final(model, len(shape.pieces), "")) + b"\n")


# ---------------------------------------------------------------- the server


class Upstream:
    """The request handler; renderings are cached per (kind, model) so a request costs a dict lookup."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[tuple, tuple[bytes | list[bytes], Shape]] = {}
        self.requests = 0
        self.open_streams = 0
        self.max_open_streams = 0

    def _rendered(self, key: tuple, make: Callable[[Shape], bytes | list[bytes]], model: str) -> tuple:
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) > 256:  # bounded: model names come from the benchmark only
                self._cache.clear()
            shape = shape_for(model, self.settings)
            hit = self._cache[key] = (make(shape), shape)
        return hit

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if request.method == "GET" and path == "/_bench/stats":
            stats = {"requests": self.requests, "open_streams": self.open_streams, "max_open_streams": self.max_open_streams}
            return web.Response(body=orjson.dumps(stats), content_type=JSON_TYPE)
        if request.method == "POST" and path == "/_bench/reset":
            self.max_open_streams = self.open_streams
            return web.Response(body=b"{}", content_type=JSON_TYPE)
        if request.method != "POST":
            return web.Response(status=404, body=b'{"error": "not found"}', content_type=JSON_TYPE)
        raw = await request.read()
        self.requests += 1
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            return web.Response(status=400, body=b'{"error": "body is not JSON"}', content_type=JSON_TYPE)
        stream = body.get("stream") is True
        model = body.get("model") if isinstance(body.get("model"), str) else "bench"
        if path.endswith("/chat/completions"):
            if not stream:
                return self._whole(("openai", model), openai_body, model)
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            frames, shape = self._rendered(("openai-s", model, usage), lambda s: openai_frames(model, s, usage), model)
            return await self._stream(request, SSE_TYPE, frames, shape)
        if path.endswith("/v1/messages"):
            if not stream:
                return self._whole(("claude", model), claude_body, model)
            frames, shape = self._rendered(("claude-s", model), lambda s: claude_frames(model, s), model)
            return await self._stream(request, SSE_TYPE, frames, shape)
        if path.endswith("/api/chat"):
            if body.get("stream") is False:
                return self._whole(("ollama", model), ollama_body, model)
            frames, shape = self._rendered(("ollama-s", model), lambda s: ollama_frames(model, s), model)
            return await self._stream(request, NDJSON_TYPE, frames, shape)
        if "/v1beta/models/" in path:
            name, _, method = path.rpartition("/v1beta/models/")[2].partition(":")
            if method == "generateContent":
                return self._whole(("gemini", name), gemini_body, name)
            if method == "streamGenerateContent":
                sse = request.query.get("alt") == "sse"
                frames, shape = self._rendered(("gemini-s", name, sse), lambda s: gemini_frames(name, s, sse), name)
                return await self._stream(request, SSE_TYPE if sse else JSON_TYPE, frames, shape)
        return web.Response(status=404, body=b'{"error": "no such endpoint"}', content_type=JSON_TYPE)

    def _whole(self, key: tuple, render: Callable[[str], bytes], model: str) -> web.Response:
        body, _ = self._rendered(key, lambda _shape: render(model), model)
        return web.Response(body=body, content_type=JSON_TYPE)

    async def _stream(self, request: web.Request, content_type: str, frames: list[bytes], shape: Shape) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
        self.open_streams += 1
        self.max_open_streams = max(self.max_open_streams, self.open_streams)
        try:
            await resp.prepare(request)
            for i, frame in enumerate(frames):
                if shape.delay and i:
                    await asyncio.sleep(shape.delay)  # the emulated model's pace between chunks
                await resp.write(frame)
            await resp.write_eof()
        finally:
            self.open_streams -= 1
        return resp


async def serve(host: str, port: int, settings: Settings) -> None:
    """A plain aiohttp Application, like the upstreams the targets were calibrated against.

    (aiohttp's low-level ``web.Server`` answers about twice as fast, which would
    halve every "share of direct" figure without saying anything about ccproxyd.)
    """
    upstream = Upstream(settings)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096, reuse_address=True).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"bench upstream listening on {host}:{port}", flush=True)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description="The benchmark's lean upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=100, help="content chunks per stream")
    parser.add_argument("--pace-ms", type=float, default=2.0, help="pause between chunks for 'paced' models")
    parser.add_argument("--idle-chunks", type=int, default=21)
    parser.add_argument("--idle-interval", type=float, default=1.0, help="seconds between chunks for 'idle' models")
    args = parser.parse_args(argv)
    settings = Settings(args.chunks, args.pace_ms / 1000, args.idle_chunks, args.idle_interval)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.host, args.port, settings))


if __name__ == "__main__":
    main()
