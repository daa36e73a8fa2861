"""Responses streams in both directions.

Encoder: IR events → the documented event sequence (``response.created``,
``response.in_progress``, per item ``output_item.added`` … ``output_item.done``
with its part/delta events, then ``response.completed`` / ``response.incomplete``
carrying the whole response), every event with its ``sequence_number``. It also
builds the response object, so the non-streaming answer is the same encoder run
over a whole response.

Decoder: a Responses upstream's events → IR events; the ``response.completed``
event gives usage and finish, a stream that ends without one is an error.
"""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import Any, AsyncIterator

import orjson

from ... import ir
from ...errors import ProxyError
from ...streams import iter_sse, sse_frame
from ..base import StreamEncoder
from .. import carry
from . import wire


class ResponsesStreamEncoder(StreamEncoder):
    content_type = "text/event-stream"

    def __init__(self, req: ir.Request) -> None:
        state = wire.state(req)
        self.req = req
        self.id: str = state.get(wire.ID) or wire.new_id("resp")
        self.names: dict[str, list] = state.get(wire.TOOL_NAMES) or {}
        self.encrypted = bool(state.get(wire.ENCRYPTED))
        self.summaries = bool(state.get(wire.SUMMARY))
        self.echo: dict[str, Any] = state.get(wire.ECHO) or {}
        self.store = bool(state.get(wire.STORE, False))
        self.created = int(time.time())
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # finished items
        self.item: dict[str, Any] | None = None  # the item being streamed
        self.buffer: list[str] = []
        self.reasoning: ir.Reasoning | None = None
        self.usage = ir.Usage()
        self.status = "in_progress"
        self.incomplete: dict[str, str] | None = None
        self.failure: dict[str, Any] | None = None
        self.started = False

    # ------------------------------------------------------------ the response object

    def response(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created, "status": self.status,
            "error": self.failure, "incomplete_details": self.incomplete, "model": self.req.model,
            "output": list(self.output), "parallel_tool_calls": self.echo.get("parallel_tool_calls", True),
            "tool_choice": self.echo.get("tool_choice", "auto"), "tools": self.echo.get("tools", []),
            "store": self.store, "metadata": self.echo.get("metadata") or {},
        }
        for key in ("instructions", "temperature", "top_p", "max_output_tokens", "previous_response_id", "reasoning", "text",
                    "user", "truncation", "prompt_cache_key", "safety_identifier", "service_tier"):
            body[key] = self.echo.get(key)
        body["text"] = body["text"] or {"format": {"type": "text"}}
        body["reasoning"] = body["reasoning"] or {"effort": None, "summary": None}
        body["truncation"] = body["truncation"] or "disabled"
        body["usage"] = wire.usage_to_responses(self.usage) if self.status != "in_progress" else None
        return body

    # ------------------------------------------------------------ framing

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse_frame(data, kind)

    def _index(self) -> int:
        return len(self.output)

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        return self._event("response.created", response=self.response()) + self._event("response.in_progress", response=self.response())

    def _add(self, item: dict[str, Any]) -> bytes:
        self.item = item
        self.buffer = []
        return self._event("response.output_item.added", output_index=self._index(), item=dict(item))

    def _done(self) -> bytes:
        item, self.item = self.item, None
        assert item is not None
        if "status" in item:
            item["status"] = "completed"
        out = self._event("response.output_item.done", output_index=self._index(), item=item)
        self.output.append(item)
        return out

    # ------------------------------------------------------------ events

    def encode(self, event: ir.Event) -> bytes:
        out = self._start()
        if isinstance(event, ir.TextStart):
            item = {"id": wire.item_id(self.id, "msg", self._index()), "type": "message", "status": "in_progress", "role": "assistant", "content": []}
            out += self._add(item)
            out += self._event("response.content_part.added", item_id=item["id"], output_index=self._index(), content_index=0,
                               part={"type": "output_text", "text": "", "annotations": []})
        elif isinstance(event, ir.TextDelta) and self.item is not None:
            self.buffer.append(event.text)
            out += self._event("response.output_text.delta", item_id=self.item["id"], output_index=self._index(), content_index=0,
                               delta=event.text, logprobs=[])
        elif isinstance(event, ir.TextEnd) and self.item is not None:
            text, item_id = "".join(self.buffer), self.item["id"]
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            out += self._event("response.output_text.done", item_id=item_id, output_index=self._index(), content_index=0, text=text, logprobs=[])
            out += self._event("response.content_part.done", item_id=item_id, output_index=self._index(), content_index=0, part=part)
            self.item["content"] = [part]
            out += self._done()
        elif isinstance(event, ir.ReasoningStart):
            self.reasoning = ir.Reasoning("", provider_metadata=event.provider_metadata)
            out += self._add({"id": wire.item_id(self.id, "rs", self._index()), "type": "reasoning", "summary": []})
        elif isinstance(event, ir.ReasoningDelta) and self.item is not None and self.reasoning is not None:
            self.reasoning.text += event.text
            if self.summaries:
                if not self.buffer:
                    out += self._event("response.reasoning_summary_part.added", item_id=self.item["id"], output_index=self._index(),
                                       summary_index=0, part={"type": "summary_text", "text": ""})
                self.buffer.append(event.text)
                out += self._event("response.reasoning_summary_text.delta", item_id=self.item["id"], output_index=self._index(),
                                   summary_index=0, delta=event.text)
        elif isinstance(event, ir.ReasoningSignature) and self.reasoning is not None:
            self.reasoning.signature = (self.reasoning.signature or "") + event.signature
        elif isinstance(event, ir.ReasoningEnd) and self.item is not None and self.reasoning is not None:
            out += self._end_reasoning(self.reasoning)
        elif isinstance(event, ir.RedactedReasoning):
            part = ir.Reasoning(redacted=event.data)
            self.reasoning = part
            out += self._add({"id": wire.item_id(self.id, "rs", self._index()), "type": "reasoning", "summary": []})
            out += self._end_reasoning(part)
        elif isinstance(event, ir.ToolCallStart):
            out += self._add(self._call_item(event.id, event.name))
        elif isinstance(event, ir.ToolCallDelta) and self.item is not None:
            self.buffer.append(event.arguments)
            if self.item["type"] == "function_call":
                out += self._event("response.function_call_arguments.delta", item_id=self.item["id"], output_index=self._index(), delta=event.arguments)
        elif isinstance(event, ir.ToolCallEnd) and self.item is not None:
            out += self._end_call()
        elif isinstance(event, ir.Usage):
            self.usage = self.usage.merge(event)
        elif isinstance(event, ir.Finished):
            self.status, self.incomplete = wire.status_of(event.finish)
            kind = "response.completed" if self.status == "completed" else "response.incomplete"
            out += self._event(kind, response=self.response())
        return out

    def _end_reasoning(self, part: ir.Reasoning) -> bytes:
        assert self.item is not None
        out = b""
        text, item_id = "".join(self.buffer), self.item["id"]
        if self.buffer:
            out += self._event("response.reasoning_summary_text.done", item_id=item_id, output_index=self._index(), summary_index=0, text=text)
            out += self._event("response.reasoning_summary_part.done", item_id=item_id, output_index=self._index(), summary_index=0,
                               part={"type": "summary_text", "text": text})
            self.item["summary"] = [{"type": "summary_text", "text": text}]
        if self.encrypted:
            self.item["encrypted_content"] = carry.wrap(part)
        self.reasoning = None
        return out + self._done()

    def _call_item(self, call_id: str, flat: str) -> dict[str, Any]:
        ns, name, kind = self.names.get(flat) or [None, flat, "function"]
        index = self._index()
        if kind == "custom":
            item = {"id": wire.item_id(self.id, "ctc", index), "type": "custom_tool_call", "status": "in_progress", "call_id": call_id, "name": name, "input": ""}
        else:
            item = {"id": wire.item_id(self.id, "fc", index), "type": "function_call", "status": "in_progress", "call_id": call_id, "name": name, "arguments": ""}
        if ns is not None:
            item["namespace"] = ns
        return item

    def _end_call(self) -> bytes:
        assert self.item is not None
        arguments, item_id = "".join(self.buffer) or "{}", self.item["id"]
        if self.item["type"] == "custom_tool_call":
            value = ir.parse_arguments(arguments).get("input")
            text = value if isinstance(value, str) else arguments
            self.item["input"] = text
            out = self._event("response.custom_tool_call_input.delta", item_id=item_id, output_index=self._index(), delta=text)
            out += self._event("response.custom_tool_call_input.done", item_id=item_id, output_index=self._index(), input=text)
        else:
            self.item["arguments"] = arguments
            out = self._event("response.function_call_arguments.done", item_id=item_id, output_index=self._index(), arguments=arguments)
        return out + self._done()

    def end(self) -> bytes:
        return b""

    def error(self, err: ProxyError) -> bytes:
        out = self._start()
        if self.item is not None:
            self.item["status"] = "incomplete"
            self.output.append(self.item)
            self.item = None
        self.status = "failed"
        self.failure = {"code": wire.error_object(err)["type"], "message": err.message}
        return out + self._event("response.failed", response=self.response())


# ---------------------------------------------------------------- decoding an upstream's stream


class ResponsesStreamDecoder:
    """Responses events → IR events. Calls are keyed by item id; reasoning summary parts join with a blank line."""

    def __init__(self) -> None:
        self.blocks = ir.BlockBuilder()
        self.started = False
        self.finished = False
        self.saw_call = False
        self.call_args: dict[str, bool] = {}  # item id → arguments already streamed
        self.summary_index: int | None = None

    def feed(self, data: dict[str, Any]) -> list[ir.Event]:
        kind = data.get("type")
        out: list[ir.Event] = []
        if not self.started:
            self.started = True
            resp = data.get("response") if isinstance(data.get("response"), dict) else {}
            out.append(ir.ResponseStart(resp.get("id"), resp.get("model")))
        if kind == "response.output_item.added":
            item = data.get("item") or {}
            if item.get("type") == "reasoning":
                self.summary_index = None
                out += self.blocks.reasoning_start({wire.NAME: {"id": item.get("id")}})
            elif item.get("type") == "function_call":
                self.saw_call = True
                self.call_args[item.get("id", "")] = False
                out += self.blocks.tool_start(item.get("call_id") or ir.new_call_id(), item.get("name") or "")
        elif kind == "response.output_text.delta" or kind == "response.refusal.delta":
            out += self.blocks.text(data.get("delta") or "")
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            index = data.get("summary_index", data.get("content_index"))
            if self.summary_index is not None and index != self.summary_index:
                out += self.blocks.reasoning("\n\n")
            self.summary_index = index
            out += self.blocks.reasoning(data.get("delta") or "")
        elif kind == "response.function_call_arguments.delta":
            self.call_args[data.get("item_id", "")] = True
            out += self.blocks.tool_args(data.get("delta") or "")
        elif kind == "response.output_item.done":
            out += self._item_done(data.get("item") or {})
        elif kind in ("response.completed", "response.incomplete"):
            resp = data.get("response") or {}
            out += self.blocks.close()
            out.append(wire.usage_from_responses(resp.get("usage")))
            out.append(ir.Finished(wire.finish_from(resp.get("status"), resp.get("incomplete_details"), self.saw_call)))
            self.finished = True
        elif kind in ("response.failed", "error"):
            err = (data.get("response") or {}).get("error") if kind == "response.failed" else data
            err = err if isinstance(err, dict) else {}
            out.append(ir.StreamError("api_error", str(err.get("message") or "the upstream response failed"), 502))
            self.finished = True
        return out

    def _item_done(self, item: dict[str, Any]) -> list[ir.Event]:
        out: list[ir.Event] = []
        if item.get("type") == "reasoning":
            if self.blocks.open != "reasoning":
                out += self.blocks.reasoning_start({wire.NAME: {"id": item.get("id")}})
            if item.get("encrypted_content"):
                out += self.blocks.signature(item["encrypted_content"])
        elif item.get("type") == "function_call" and not self.call_args.get(item.get("id", ""), True):
            out += self.blocks.tool_args(item.get("arguments") or "")
        elif item.get("type") == "message" and self.blocks.open != "text":
            for part in item.get("content") or ():  # text that came without deltas
                out += self.blocks.text(part.get("text") or part.get("refusal") or "")
        return out + self.blocks.close()


async def decode_stream(chunks: AsyncIterator[bytes]) -> ir.EventStream:
    decoder = ResponsesStreamDecoder()
    async with aclosing(iter_sse(chunks)) as events:  # left at the final event: closed now, not by a task once collected
        async for event in events:
            if event.data == "[DONE]":
                break
            try:
                data = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                yield ir.StreamError("bad_gateway", "upstream sent a stream event that is not JSON", 502)
                return
            if not isinstance(data, dict):
                continue
            for e in decoder.feed(data):
                yield e
            if decoder.finished:
                return
    yield ir.StreamError("bad_gateway", "upstream stream ended before the response completed", 502)
