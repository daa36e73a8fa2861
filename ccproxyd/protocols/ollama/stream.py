"""Ollama NDJSON streams, both directions.

One JSON object a line: text and thinking pieces with ``done: false``, each
tool call whole in one line, then one ``done: true`` line with the reason and
the counts. An error after the stream started is a line ``{"error": "..."}``.
"""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import Any, AsyncIterator

import orjson

from ... import ir
from ...errors import ProxyError
from ...streams import FrameTooLarge, iter_lines, ndjson_line
from ..base import StreamEncoder
from .response import counts, message_of
from .wire import done_reason_for, finish_from_done, now_rfc3339, tool_call_from_wire, tool_call_to_wire, usage_from


async def decode_stream(chunks: AsyncIterator[bytes]) -> ir.EventStream:
    """Upstream NDJSON → IR events. Bad lines, error lines and a stream cut before its
    ``done`` line each end the events with one StreamError."""
    blocks = ir.BlockBuilder()
    started = called = False
    try:
        async with aclosing(iter_lines(chunks)) as lines:
            async for line in lines:
                if not line.strip():
                    continue
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:
                    yield ir.StreamError("bad_gateway", f"the Ollama upstream sent a line that is not JSON: {line[:200]!r}", 502)
                    return
                if not isinstance(obj, dict):
                    yield ir.StreamError("bad_gateway", "the Ollama upstream sent a line that is not a JSON object", 502)
                    return
                if "error" in obj:
                    yield ir.StreamError("api_error", str(obj["error"]), 500)
                    return
                if not started:
                    started = True
                    model = obj.get("model")
                    yield ir.ResponseStart(None, model if isinstance(model, str) else None)
                for event in _message_events(blocks, message_of(obj)):
                    called = called or isinstance(event, ir.ToolCallStart)
                    yield event
                if obj.get("done") is True:
                    for event in blocks.close():
                        yield event
                    yield usage_from(obj)
                    yield ir.Finished(finish_from_done(obj.get("done_reason"), called))
                    return
    except FrameTooLarge as e:
        yield ir.StreamError("bad_gateway", str(e), 502)
        return
    yield ir.StreamError("bad_gateway", "the Ollama stream ended before its done line", 502)


def _message_events(blocks: ir.BlockBuilder, message: Any) -> list[ir.Event]:
    if not isinstance(message, dict):
        return []
    events: list[ir.Event] = []
    thinking = message.get("thinking")
    if isinstance(thinking, str):
        events.extend(blocks.reasoning(thinking))
    content = message.get("content")
    if isinstance(content, str):
        events.extend(blocks.text(content))
    for raw in message.get("tool_calls") or ():
        call = tool_call_from_wire(raw)
        if call is not None:
            events.extend(blocks.tool_call(call.id, call.name, orjson.dumps(call.arguments).decode()))
    return events


class OllamaStreamEncoder(StreamEncoder):
    """IR events → NDJSON lines for an Ollama client, one line per delta as it comes.

    A tool call is held from its start to its end (Ollama sends calls whole, with
    ``arguments`` an object) and written in one line. The final ``done`` line carries
    the counts and durations in nanoseconds: ``total_duration`` measured from this
    encoder's creation, the others from the upstream when it is Ollama, else measured
    around the first output.
    """

    content_type = "application/x-ndjson"

    def __init__(self, model: str, show_thinking: bool = True) -> None:
        self.model = model
        self.show_thinking = show_thinking
        self.started_ns = time.monotonic_ns()
        self.first_output_ns: int | None = None
        self.usage = ir.Usage()
        self.tool: tuple[str, str, list[str]] | None = None
        self.tool_index = 0
        self.closed = False  # the done line or an error line was written

    def encode(self, event: ir.Event) -> bytes:
        if self.closed:
            return b""
        if isinstance(event, ir.TextDelta):
            return self._line({"role": "assistant", "content": event.text}) if event.text else b""
        if isinstance(event, ir.ReasoningDelta):
            if not (event.text and self.show_thinking):
                return b""
            return self._line({"role": "assistant", "content": "", "thinking": event.text})
        if isinstance(event, ir.ToolCallStart):
            self._output_started()
            self.tool = (event.id, event.name, [])
            return b""
        if isinstance(event, ir.ToolCallDelta):
            if self.tool is not None:
                self.tool[2].append(event.arguments)
            return b""
        if isinstance(event, ir.ToolCallEnd):
            return self._tool_line()
        if isinstance(event, ir.Usage):
            self.usage = self.usage.merge(event)
            return b""
        if isinstance(event, ir.Finished):
            return self._tool_line() + self._done(event.finish)
        if isinstance(event, ir.StreamError):
            return self._error_line(event.message)
        return b""  # block starts/ends, signatures and redacted thinking have no Ollama form

    def end(self) -> bytes:
        """A stream that ended without Finished still gets its done line."""
        if self.closed:
            return b""
        return self._tool_line() + self._done(ir.Finish("stop"))

    def error(self, err: ProxyError) -> bytes:
        return b"" if self.closed else self._error_line(err.message)

    def _line(self, message: dict[str, Any]) -> bytes:
        self._output_started()
        return ndjson_line({"model": self.model, "created_at": now_rfc3339(), **self._body(message), "done": False})

    def _body(self, message: dict[str, Any]) -> dict[str, Any]:
        """Where a line carries its message (``/api/generate`` lines say ``response`` instead)."""
        return {"message": message}

    def _tool_line(self) -> bytes:
        if self.tool is None:
            return b""
        call = ir.ToolCall(self.tool[0], self.tool[1], ir.parse_arguments("".join(self.tool[2])))
        self.tool = None
        wire = tool_call_to_wire(call, self.tool_index)
        self.tool_index += 1
        return self._line({"role": "assistant", "content": "", "tool_calls": [wire]})

    def _done(self, finish: ir.Finish) -> bytes:
        self.closed = True
        now = time.monotonic_ns()
        first = self.first_output_ns or now
        raw = self.usage.raw or {}
        line: dict[str, Any] = {
            "model": self.model,
            "created_at": now_rfc3339(),
            **self._body({"role": "assistant", "content": ""}),
            "done": True,
            "done_reason": done_reason_for(finish),
            "total_duration": max(1, now - self.started_ns),
            "load_duration": _ns(raw.get("load_duration"), 0),
            "prompt_eval_duration": _ns(raw.get("prompt_eval_duration"), max(1, first - self.started_ns)),
            "eval_duration": _ns(raw.get("eval_duration"), max(1, now - first)),
        }
        line.update(counts(self.usage))
        return ndjson_line(line)

    def _error_line(self, message: str) -> bytes:
        self.closed = True
        return ndjson_line({"error": message})

    def _output_started(self) -> None:
        if self.first_output_ns is None:
            self.first_output_ns = time.monotonic_ns()


def _ns(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
