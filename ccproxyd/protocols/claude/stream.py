"""Claude message streams, both directions.

Decoding: SSE events from a Claude upstream → IR events. The usage in
``message_start`` is emitted just before the first block, so a Claude client's
``message_start`` can carry the real input tokens.

Encoding: :class:`ClaudeStreamEncoder` turns IR events into the stream the
Anthropic SDKs and Claude Code parse: exactly one ``message_start``, blocks
opened lazily (never an empty text block) with indices contiguous from 0, each
closed once, tool arguments only in ``input_json_delta``, a thinking block's
``signature_delta`` just before its stop, one ``message_delta`` (stop_reason and
the full usage, input tokens included) and ``message_stop``.
"""

from __future__ import annotations

import dataclasses
from contextlib import aclosing
from typing import Any, AsyncIterator, Literal

import orjson

from ... import ir
from ...errors import ProxyError, UpstreamError
from ...streams import FrameTooLarge, iter_sse, sse_frame
from .. import carry
from ..base import StreamEncoder
from .response import error_body
from .wire import (
    CLAUDE_THINKING,
    KIND_FROM_ERROR_TYPE,
    STATUS_FROM_ERROR_TYPE,
    finish_from_claude,
    message_id,
    stop_reason_for,
    stop_sequence_for,
    usage_from_claude,
    usage_to_claude,
)

# ---------------------------------------------------------------- from a Claude upstream


class ClaudeStreamDecoder:
    """One upstream stream's state: which block index is what, usage so far, the stop reason."""

    def __init__(self) -> None:
        self.blocks = ir.BlockBuilder()
        self.kinds: dict[int, str] = {}  # index → text | thinking | tool_use (others are skipped)
        self.start_input: dict[int, dict[str, Any]] = {}  # a tool_use start that already held input
        self.usage: dict[str, Any] = {}
        self.stop_reason: str | None = None
        self.started = False
        self.usage_pending = False
        self.finished = False
        self.called_tool = False

    def feed(self, event: str | None, data: dict[str, Any]) -> list[ir.Event]:
        kind = data.get("type") or event
        if kind == "message_start":
            message = data.get("message") or {}
            self.usage.update(message.get("usage") or {})
            self.started = self.usage_pending = True
            return [ir.ResponseStart(message.get("id"), message.get("model"))]
        if not self.started and kind != "ping":  # a lax compatible server that skipped message_start
            self.started = True
            return [ir.ResponseStart()] + self.feed(event, data)
        events = self._feed(kind, data)
        if events and self.usage_pending:
            # message_start's usage goes out with the first content, not before: an error event
            # right after message_start then still counts as "nothing sent" and can fail over.
            self.usage_pending = False
            events.insert(0, usage_from_claude(self.usage))
        return events

    def _feed(self, kind: str | None, data: dict[str, Any]) -> list[ir.Event]:
        if kind == "content_block_start":
            return self._start(data.get("index"), data.get("content_block") or {})
        if kind == "content_block_delta":
            return self._delta(data.get("index"), data.get("delta") or {})
        if kind == "content_block_stop":
            return self._stop(data.get("index"))
        if kind == "message_delta":
            delta = data.get("delta") or {}
            self.stop_reason = delta.get("stop_reason") or self.stop_reason
            usage = data.get("usage")
            if isinstance(usage, dict):
                self.usage.update({k: v for k, v in usage.items() if v is not None})
                return [usage_from_claude(self.usage)]
            return []
        if kind == "message_stop":
            return self.finish()
        return []  # ping and event types added later

    def _start(self, index: Any, block: dict[str, Any]) -> list[ir.Event]:
        kind = block.get("type")
        if not isinstance(index, int) or kind not in ("text", "thinking", "redacted_thinking", "tool_use"):
            return []
        out = self.blocks.close()
        if kind == "redacted_thinking":
            out.extend(self.blocks.redacted(str(block.get("data") or "")))
            return out
        self.kinds[index] = kind
        if kind == "text":
            out.extend(self.blocks.text(str(block.get("text") or "")))
        elif kind == "thinking":
            out.extend(self.blocks.reasoning_start({k: dict(v) for k, v in CLAUDE_THINKING.items()}))
            out.extend(self.blocks.reasoning(str(block.get("thinking") or "")))
        else:
            self.called_tool = True
            out.extend(self.blocks.tool_start(str(block.get("id") or ir.new_call_id()), str(block.get("name") or "")))
            if isinstance(block.get("input"), dict) and block["input"]:
                self.start_input[index] = block["input"]  # only used if no input_json_delta follows
        return out

    def _delta(self, index: Any, delta: dict[str, Any]) -> list[ir.Event]:
        kind = self.kinds.get(index)  # type: ignore[arg-type]
        dtype = delta.get("type")
        if kind == "text" and dtype == "text_delta":
            return self.blocks.text(str(delta.get("text") or ""))
        if kind == "thinking" and dtype == "thinking_delta":
            return self.blocks.reasoning(str(delta.get("thinking") or ""))
        if kind == "thinking" and dtype == "signature_delta" and delta.get("signature"):
            return self.blocks.signature(str(delta["signature"]))
        if kind == "tool_use" and dtype == "input_json_delta":
            self.start_input.pop(index, None)  # type: ignore[arg-type]
            return self.blocks.tool_args(str(delta.get("partial_json") or ""))
        return []

    def _stop(self, index: Any) -> list[ir.Event]:
        if self.kinds.pop(index, None) is None:  # type: ignore[arg-type]
            return []
        out: list[ir.Event] = []
        early = self.start_input.pop(index, None)  # type: ignore[arg-type]
        if early is not None:
            out.extend(self.blocks.tool_args(orjson.dumps(early).decode()))
        out.extend(self.blocks.close())
        return out

    def finish(self) -> list[ir.Event]:
        if self.finished:
            return []
        self.finished = True
        out = self.blocks.close()
        out.append(ir.Finished(finish_from_claude(self.stop_reason, self.called_tool)))
        return out


async def decode_stream(chunks: AsyncIterator[bytes]) -> ir.EventStream:
    decoder = ClaudeStreamDecoder()
    try:
        async with aclosing(iter_sse(chunks)) as events:  # left at message_stop: closed now, not by a task once collected
            async for sse in events:
                try:
                    data = orjson.loads(sse.data)
                except orjson.JSONDecodeError:
                    yield ir.StreamError("bad_gateway", "upstream sent a stream event that is not JSON", 502)
                    return
                if not isinstance(data, dict):
                    continue
                if (data.get("type") or sse.event) == "error":
                    yield _stream_error(data)
                    return
                for event in decoder.feed(sse.event, data):
                    yield event
                if decoder.finished:
                    return
    except FrameTooLarge as exc:
        yield ir.StreamError("bad_gateway", str(exc), 502)
        return
    if decoder.stop_reason is None:
        yield ir.StreamError("bad_gateway", "upstream stream ended before message_stop", 502)
        return
    for event in decoder.finish():  # message_delta came, message_stop was lost: the answer is complete
        yield event


def _stream_error(data: dict[str, Any]) -> ir.StreamError:
    err = data.get("error") if isinstance(data.get("error"), dict) else {}
    etype = str(err.get("type") or "api_error")
    return ir.StreamError(KIND_FROM_ERROR_TYPE.get(etype, "api_error"), str(err.get("message") or etype), STATUS_FROM_ERROR_TYPE.get(etype, 500))


# ---------------------------------------------------------------- to a Claude client

BlockKind = Literal["text", "thinking", "tool_use"]


class ClaudeStreamEncoder(StreamEncoder):
    """IR events → Claude SSE frames, for one response.

    ``message_start`` waits for the first content (or the end), so the usage a
    Claude upstream reports up front reaches it. Upstreams that report input
    tokens only at the end get an estimate there, and the real count in
    ``message_delta``, where the Anthropic SDK takes it from.

    Reasoning from a non-Claude upstream that needs something back (a Responses
    blob, Gemini signatures, the field it came in) gets a carried signature
    (:mod:`..carry`), which the inbound side unwraps and never sends to Claude;
    other foreign reasoning gets an empty signature, and Claude Code will not
    replay it.
    """

    content_type = "text/event-stream"

    def __init__(self, req: ir.Request) -> None:
        self.req = req
        self.id: str | None = None
        self.usage = ir.Usage()
        self.started = False
        self.done = False
        self.next_index = 0
        self.open: BlockKind | None = None
        self.claude_thinking = False
        self.foreign: ir.Reasoning | None = None  # another upstream's reasoning, to carry in the signature
        self.signature = ""
        self.sent_arguments = False
        self.finish: ir.Finish | None = None

    def begin(self) -> bytes:
        return b""

    # ------------------------------------------------------------ events

    def encode(self, event: ir.Event) -> bytes:
        if self.done:
            return b""
        if isinstance(event, ir.ResponseStart):
            self.id = event.id
            return b""
        if isinstance(event, ir.Usage):
            self.usage = self.usage.merge(event)
            return b""
        if isinstance(event, ir.TextStart):
            return self._close()
        if isinstance(event, ir.TextDelta):
            if not event.text:
                return b""
            return self._open("text") + self._delta({"type": "text_delta", "text": event.text})
        if isinstance(event, ir.TextEnd):
            return self._close()
        if isinstance(event, ir.ReasoningStart):
            out = self._close()
            self.claude_thinking = "claude" in (event.provider_metadata or {})
            self.foreign = None if self.claude_thinking else ir.Reasoning("", provider_metadata=event.provider_metadata)
            self.signature = ""
            return out
        if isinstance(event, ir.ReasoningDelta):
            if not event.text:
                return b""
            if self.foreign is not None:
                self.foreign.text += event.text
            return self._open("thinking") + self._delta({"type": "thinking_delta", "thinking": event.text})
        if isinstance(event, ir.ReasoningSignature):
            if not self.claude_thinking:
                if self.foreign is not None:
                    self.foreign.signature = (self.foreign.signature or "") + event.signature
                return b""
            self.signature += event.signature
            return self._open("thinking")
        if isinstance(event, ir.ReasoningEnd):
            foreign, self.foreign = self.foreign, None
            if foreign is not None and carry.worth_carrying(foreign):
                self.signature = carry.wrap(foreign)
                return self._open("thinking") + self._close()
            return self._close()
        if isinstance(event, ir.RedactedReasoning):
            block = {"type": "redacted_thinking", "data": event.data}
            return self._close() + self._start_block(None, block) + self._stop_block()
        if isinstance(event, ir.ToolCallStart):
            out = self._close()
            self.sent_arguments = False
            block = {"type": "tool_use", "id": event.id, "name": event.name, "input": {}}
            return out + self._start_block("tool_use", block)
        if isinstance(event, ir.ToolCallDelta):
            if self.open != "tool_use" or not event.arguments:
                return b""
            self.sent_arguments = True
            return self._delta({"type": "input_json_delta", "partial_json": event.arguments})
        if isinstance(event, ir.ToolCallEnd):
            return self._close()
        if isinstance(event, ir.Finished):
            self.finish = event.finish
            return self._message_start() + self._close()
        if isinstance(event, ir.StreamError):
            return self.error(UpstreamError(event.status, event.kind, event.message))
        return b""

    def end(self) -> bytes:
        if self.done:
            return b""
        out = self._message_start() + self._close()
        finish = self.finish or ir.Finish("stop")
        stop_reason = stop_reason_for(finish)
        delta = {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence_for(stop_reason, self.req)},
                 "usage": self._usage(self.usage)}
        self.done = True
        return out + sse_frame(delta, "message_delta") + sse_frame({"type": "message_stop"}, "message_stop")

    def error(self, err: ProxyError) -> bytes:
        if self.done:
            return b""
        self.done = True
        return sse_frame(error_body(err), "error")

    # ------------------------------------------------------------ frames

    def _message_start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        message = {
            "id": message_id(self.id),
            "type": "message",
            "role": "assistant",
            "model": self.req.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._usage(dataclasses.replace(self.usage, output_tokens=0)),
        }
        return sse_frame({"type": "message_start", "message": message}, "message_start")

    def _usage(self, usage: ir.Usage) -> dict[str, Any]:
        """Claude usage fields; the prompt size is estimated from the request while the upstream has not said."""
        return usage_to_claude(usage, ir.estimate_tokens(self.req) if usage.input_tokens is None else None)

    def _open(self, kind: Literal["text", "thinking"]) -> bytes:
        """Open the block an IR start announced, once it has content (so no block is ever empty)."""
        if self.open == kind:
            return b""
        out = self._close()
        block: dict[str, Any] = {"type": "text", "text": ""} if kind == "text" else {"type": "thinking", "thinking": "", "signature": ""}
        return out + self._start_block(kind, block)

    def _start_block(self, kind: BlockKind | None, block: dict[str, Any]) -> bytes:
        frame = self._message_start() + sse_frame({"type": "content_block_start", "index": self.next_index, "content_block": block}, "content_block_start")
        self.open = kind
        self.next_index += 1
        return frame

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse_frame({"type": "content_block_delta", "index": self.next_index - 1, "delta": delta}, "content_block_delta")

    def _stop_block(self) -> bytes:
        self.open = None
        return sse_frame({"type": "content_block_stop", "index": self.next_index - 1}, "content_block_stop")

    def _close(self) -> bytes:
        """Finish the open block: a tool call gets at least ``{}`` as input, thinking its signature."""
        if self.open is None:
            return b""
        out = b""
        if self.open == "tool_use" and not self.sent_arguments:
            out += self._delta({"type": "input_json_delta", "partial_json": "{}"})
        elif self.open == "thinking" and self.signature:
            out += self._delta({"type": "signature_delta", "signature": self.signature})
            self.signature = ""
        return out + self._stop_block()
