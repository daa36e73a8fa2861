"""IR events → a Gemini client's stream.

With ``?alt=sse`` each GenerateContentResponse is one ``data:`` frame ended by
CRLF CRLF, as Google sends them, with no terminator frame; without it the
stream is one JSON array written element by element. Text and thoughts go out
as they arrive. Function calls go out whole: a call's argument fragments are
held until its end, and finished calls wait for the next event so that
parallel calls share one frame and the last ones carry the finishReason, the
way Gemini sends them.
"""

from __future__ import annotations

from typing import Any

import orjson

from ... import ir
from ...errors import ProxyError
from .. import carry
from ..base import StreamEncoder
from .response import new_response_id
from .wire import error_body, finish_to_gemini, signature_of, usage_to_gemini


class GeminiStreamEncoder(StreamEncoder):
    def __init__(self, req: ir.Request, sse: bool) -> None:
        self.sse = sse
        self.content_type = "text/event-stream" if sse else "application/json"  # type: ignore[misc]
        self.model = req.model
        self.include_thoughts = bool(req.reasoning and req.reasoning.enabled and req.reasoning.include_thoughts)
        self.response_id = new_response_id()
        self.frames = 0
        self.closed = False
        self.usage = ir.Usage()
        # the open block: "text", "thought", "hidden" (thoughts the client did not ask for) or None
        self.block: str | None = None
        self.block_signature: str | None = None
        self.foreign: ir.Reasoning | None = None  # another upstream's reasoning, carried in a thoughtSignature
        self.call: tuple[str, str, str | None, list[str]] | None = None
        self.calls: list[dict[str, Any]] = []  # whole functionCall parts not sent yet

    # ------------------------------------------------------------ framing

    def begin(self) -> bytes:
        return b"" if self.sse else b"["

    def _write(self, obj: dict[str, Any]) -> bytes:
        data = orjson.dumps(obj)
        self.frames += 1
        if self.sse:
            return b"data: " + data + b"\r\n\r\n"
        return data if self.frames == 1 else b",\r\n" + data

    def _frame(self, parts: list[dict[str, Any]], finish: ir.Finish | None = None) -> bytes:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        obj: dict[str, Any] = {"candidates": [candidate]}
        if finish is not None:
            candidate["finishReason"] = finish_to_gemini(finish)
            obj["usageMetadata"] = usage_to_gemini(self.usage)
        obj["modelVersion"] = self.model
        obj["responseId"] = self.response_id
        return self._write(obj)

    def _flush_calls(self) -> bytes:
        if not self.calls:
            return b""
        calls, self.calls = self.calls, []
        return self._frame(calls)

    # ------------------------------------------------------------ events

    def encode(self, event: ir.Event) -> bytes:
        if self.closed:
            return b""
        if isinstance(event, ir.TextDelta):
            return self._content({"text": event.text}) if self.block == "text" else b""
        if isinstance(event, ir.ReasoningDelta):
            if self.foreign is not None:
                self.foreign.text += event.text
            return self._content({"text": event.text, "thought": True}) if self.block == "thought" else b""
        if isinstance(event, ir.ToolCallDelta):
            if self.call is not None:
                self.call[3].append(event.arguments)
            return b""
        if isinstance(event, ir.TextStart):
            return self._open("text", event.provider_metadata)
        if isinstance(event, ir.ReasoningStart):
            out = self._open("thought" if self.include_thoughts else "hidden", event.provider_metadata)
            self.foreign = None if self.block_signature else ir.Reasoning("", provider_metadata=event.provider_metadata)
            return out
        if isinstance(event, ir.ReasoningSignature) and self.foreign is not None:
            self.foreign.signature = (self.foreign.signature or "") + event.signature
            return b""
        if isinstance(event, ir.ReasoningEnd):
            out = self._close_block()
            foreign, self.foreign = self.foreign, None
            if foreign is not None and carry.worth_carrying(foreign):  # what its upstream needs back, on an empty part
                part = {"text": "", "thought": True} if self.include_thoughts else {"text": ""}
                out += self._frame([{**part, "thoughtSignature": carry.wrap(foreign)}])
            return out
        if isinstance(event, ir.TextEnd):
            return self._close_block()
        if isinstance(event, ir.ToolCallStart):
            out = self._close_block()
            self.call = (event.id, event.name, signature_of(event.provider_metadata), [])
            return out
        if isinstance(event, ir.ToolCallEnd):
            self._end_call()
            return b""
        if isinstance(event, ir.Usage):
            self.usage = self.usage.merge(event)
            return b""
        if isinstance(event, ir.Finished):
            return self._finish(event.finish)
        if isinstance(event, ir.ResponseStart):
            self.response_id = event.id or self.response_id
        # RedactedReasoning belongs to Claude; Gemini clients cannot replay it
        return b""

    def _open(self, block: str, meta: dict[str, Any] | None) -> bytes:
        out = self._close_block() + self._flush_calls()
        self.block = block
        self.block_signature = signature_of(meta)
        return out

    def _content(self, part: dict[str, Any]) -> bytes:
        if self.block_signature:
            part["thoughtSignature"], self.block_signature = self.block_signature, None
        return self._frame([part])

    def _close_block(self) -> bytes:
        """A signed block that had no text still sends its signature, on an empty part."""
        block, sig = self.block, self.block_signature
        self.block = self.block_signature = None
        if sig and block == "text":
            return self._frame([{"text": "", "thoughtSignature": sig}])
        if sig and block == "thought":
            return self._frame([{"text": "", "thought": True, "thoughtSignature": sig}])
        return b""

    def _end_call(self) -> None:
        if self.call is None:
            return
        call_id, name, sig, fragments = self.call
        self.call = None
        part: dict[str, Any] = {"functionCall": {"id": call_id, "name": name, "args": ir.parse_arguments("".join(fragments))}}
        if sig:
            part["thoughtSignature"] = sig
        self.calls.append(part)

    def _finish(self, finish: ir.Finish) -> bytes:
        out = self._close_block()
        self._end_call()
        calls, self.calls = self.calls, []
        # an empty text part rather than no parts: google-genai's chat drops a turn with an empty chunk
        return out + self._frame(calls or [{"text": ""}], finish)

    def end(self) -> bytes:
        if self.closed:
            return b""
        self.closed = True
        out = self._close_block()
        self._end_call()
        out += self._flush_calls()
        return out if self.sse else out + b"]"

    def error(self, err: ProxyError) -> bytes:
        if self.closed:
            return b""
        body = error_body(err.status, err.kind, err.message, getattr(err, "retry_after", None))
        out = self._write(body)
        self.closed = True
        return out if self.sse else out + b"]"
