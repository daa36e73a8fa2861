"""Gemini responses: upstream bodies, streams and errors → IR, and IR responses → client bodies.

Every part that carries a ``thoughtSignature`` starts its own IR block whose
start carries the signature, so it can be put back on the same part when the
conversation returns to Gemini.
"""

from __future__ import annotations

import re
from typing import Any, AsyncIterator

import orjson

from ... import ir
from ...errors import UpstreamError, kind_for_status
from ...streams import SSEDecoder, close_chunks
from .. import carry
from .wire import (
    KIND_BY_STATUS,
    finish_from_gemini,
    finish_to_gemini,
    get,
    signature_meta,
    signature_of,
    usage_from_gemini,
    usage_to_gemini,
)

_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def new_response_id() -> str:
    return ir.random_hex(22)


def _candidate(obj: dict[str, Any]) -> dict[str, Any] | None:
    for cand in obj.get("candidates") or ():
        if isinstance(cand, dict) and cand.get("index", 0) == 0:
            return cand
    return None


def _parts(cand: dict[str, Any] | None) -> list[dict[str, Any]]:
    content = (cand or {}).get("content") or {}
    return [p for p in content.get("parts") or () if isinstance(p, dict)] if isinstance(content, dict) else []


def _function_call(call: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """id (Gemini's own when it gave one), name and args of a functionCall."""
    call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else ir.new_call_id()
    args = call.get("args") if isinstance(call.get("args"), dict) else {}
    return call_id, str(call.get("name") or ""), args


def _block_reason(obj: dict[str, Any]) -> str | None:
    feedback = get(obj, "promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
    return reason if isinstance(reason, str) else None


# ---------------------------------------------------------------- upstream → IR


class StreamDecoder:
    """GenerateContentResponse chunks → IR events. Usage is cumulative in Gemini streams: merged, sent once."""

    def __init__(self) -> None:
        self.blocks = ir.BlockBuilder()
        self.started = False
        self.finish_raw: str | None = None
        self.usage = ir.Usage()
        self.saw_call = False
        self.blocked = False

    def feed(self, obj: dict[str, Any]) -> list[ir.Event]:
        out: list[ir.Event] = []
        if not self.started:
            self.started = True
            out.append(ir.ResponseStart(get(obj, "responseId"), get(obj, "modelVersion")))
        if isinstance(get(obj, "usageMetadata"), dict):
            self.usage = self.usage.merge(usage_from_gemini(get(obj, "usageMetadata")))
        cand = _candidate(obj)
        for part in _parts(cand):
            out.extend(self._part(part))
        if cand and get(cand, "finishReason"):
            self.finish_raw = get(cand, "finishReason")
        elif cand is None and _block_reason(obj):
            self.finish_raw, self.blocked = _block_reason(obj), True
        return out

    def _part(self, part: dict[str, Any]) -> list[ir.Event]:
        meta = signature_meta(part)
        out: list[ir.Event] = self.blocks.close() if meta else []
        call = get(part, "functionCall")
        if isinstance(call, dict):
            self.saw_call = True
            call_id, name, args = _function_call(call)
            out.extend(self.blocks.tool_call(call_id, name, orjson.dumps(args).decode(), meta))
            return out
        text = part.get("text")
        thought = part.get("thought") is True
        if not isinstance(text, str):
            return out
        if text:
            out.extend(self.blocks.reasoning(text, meta) if thought else self.blocks.text(text, meta))
        elif meta:
            # a signature on an empty part (Gemini 3 signs the end of a text answer so): a block of its own
            out.extend([ir.ReasoningStart(meta), ir.ReasoningEnd()] if thought else [ir.TextStart(meta), ir.TextEnd()])
        return out

    def close(self) -> list[ir.Event]:
        out = self.blocks.close()
        out.append(self.usage)
        out.append(ir.Finished(_finish(self.finish_raw, self.saw_call, self.blocked)))
        return out


def _finish(raw: str | None, saw_call: bool, blocked: bool) -> ir.Finish:
    """A prompt blocked before any candidate (promptFeedback.blockReason) is a content filter, whatever the word."""
    return ir.Finish("content_filter", raw) if blocked else finish_from_gemini(raw, saw_call)


def decode_response(body: bytes) -> ir.Response:
    data = orjson.loads(body)
    if not isinstance(data, dict):
        raise UpstreamError(502, "bad_gateway", "upstream response is not a JSON object")
    if isinstance(data.get("error"), dict):
        raise decode_error(int(data["error"].get("code") or 502), body)
    cand = _candidate(data)
    if cand is None and not _block_reason(data):
        raise UpstreamError(502, "bad_gateway", "upstream response has no candidates")
    parts: list[ir.Part] = []
    saw_call = False
    for part in _parts(cand):
        meta = signature_meta(part)
        call = get(part, "functionCall")
        last = parts[-1] if parts else None
        if isinstance(call, dict):
            saw_call = True
            parts.append(ir.ToolCall(*_function_call(call), meta))
        elif not isinstance(part.get("text"), str):
            continue
        elif part.get("thought") is True:
            if isinstance(last, ir.Reasoning) and not meta and last.redacted is None:
                last.text += part["text"]
            else:
                parts.append(ir.Reasoning(part["text"], provider_metadata=meta))
        elif not part["text"] and meta and isinstance(last, ir.Text) and last.provider_metadata is None:
            last.provider_metadata = meta  # the signature of a text answer, split off into an empty part
        elif isinstance(last, ir.Text) and not meta and part["text"]:
            last.text += part["text"]
        elif part["text"] or meta:
            parts.append(ir.Text(part["text"], meta))
    raw = get(cand, "finishReason") if cand else _block_reason(data)
    return ir.Response(
        get(data, "responseId") or "",
        get(data, "modelVersion") or "",
        parts,
        _finish(raw, saw_call, cand is None),
        usage_from_gemini(get(data, "usageMetadata")),
    )


async def _objects(chunks: AsyncIterator[bytes]) -> AsyncIterator[Any]:
    """The stream's JSON values: SSE ``data:`` frames, or one JSON array from an upstream that ignored alt=sse."""
    it = chunks.__aiter__()
    head = b""
    while not head.strip():
        try:
            head += await anext(it)
        except StopAsyncIteration:
            return
    if head.lstrip().startswith(b"["):
        rest = [head]
        async for chunk in it:
            rest.append(chunk)
        for item in orjson.loads(b"".join(rest)):
            yield item
        return

    sse = SSEDecoder()  # split in this loop, not by an iter_sse generator in between: one layer less per chunk
    for event in sse.feed(head):
        yield orjson.loads(event.data)
    sse.check()
    try:
        async for chunk in it:
            for event in sse.feed(chunk):
                yield orjson.loads(event.data)
            sse.check()
    finally:
        await close_chunks(it)
    for event in sse.close():
        yield orjson.loads(event.data)


async def decode_stream(chunks: AsyncIterator[bytes]) -> ir.EventStream:
    decoder = StreamDecoder()
    objects = _objects(chunks)
    while True:
        try:
            obj = await anext(objects)
        except StopAsyncIteration:
            break
        except orjson.JSONDecodeError:
            yield ir.StreamError("bad_gateway", "upstream sent a stream chunk that is not JSON", 502)
            return
        if not isinstance(obj, dict):
            continue
        if isinstance(obj.get("error"), dict):
            err = decode_error(int(obj["error"].get("code") or 500), orjson.dumps(obj))
            yield ir.StreamError(err.kind, err.message, err.status)
            return
        for event in decoder.feed(obj):
            yield event
    if not decoder.started:
        yield ir.StreamError("bad_gateway", "upstream stream ended without a response", 502)
        return
    for event in decoder.close():
        yield event


def decode_error(status: int, body: bytes) -> UpstreamError:
    message = body.decode("utf-8", "replace").strip()[:500] or f"upstream answered HTTP {status}"
    kind: str | None = None
    retry_after: float | None = None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, list) and data:  # the JSON-array stream wraps errors too
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or message).strip()
        kind = KIND_BY_STATUS.get(str(err.get("status") or ""))
        for detail in err.get("details") or ():
            if not isinstance(detail, dict):
                continue
            if detail.get("reason") == "API_KEY_INVALID":
                status, kind = 401, "authentication"  # Google says 400; it is a bad key, so another key may work
            delay = _DELAY.match(str(detail.get("retryDelay") or ""))
            if delay:
                retry_after = float(delay.group(1))
    return UpstreamError(status, kind or kind_for_status(status), message, retry_after=retry_after)


def decode_count_tokens(body: bytes) -> int:
    data = orjson.loads(body)
    total = data.get("totalTokens") if isinstance(data, dict) else None
    if not isinstance(total, int):
        raise ValueError("countTokens answer has no totalTokens")
    return total


# ---------------------------------------------------------------- IR → client


def encode_parts(parts: list[ir.Part], include_thoughts: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for part in parts:
        sig = signature_of(part.provider_metadata)
        if isinstance(part, ir.Text):
            if not part.text and sig and out and "text" in out[-1] and "thought" not in out[-1] and "thoughtSignature" not in out[-1]:
                out[-1]["thoughtSignature"] = sig
                continue
            item: dict[str, Any] = {"text": part.text}
        elif isinstance(part, ir.Reasoning):
            if part.redacted is not None:
                continue
            if not sig and carry.worth_carrying(part):  # another upstream's reasoning: what it needs back rides here
                sig = carry.wrap(part)
            elif not include_thoughts:
                continue
            item = {"text": part.text, "thought": True} if include_thoughts else {"text": ""}
        elif isinstance(part, ir.ToolCall):
            item = {"functionCall": {"id": part.id, "name": part.name, "args": part.arguments}}
        else:
            continue
        if sig:
            item["thoughtSignature"] = sig
        out.append(item)
    return out


def encode_response(resp: ir.Response, model: str, include_thoughts: bool) -> dict[str, Any]:
    parts = encode_parts(resp.parts, include_thoughts)
    candidate: dict[str, Any] = {"finishReason": finish_to_gemini(resp.finish), "index": 0}
    if parts or resp.finish.reason != "content_filter":  # a blocked answer has no content, as from Google
        # an empty text part, not an empty list: google-genai's chat drops turns with empty content
        candidate = {"content": {"parts": parts or [{"text": ""}], "role": "model"}, **candidate}
    return {
        "candidates": [candidate],
        "usageMetadata": usage_to_gemini(resp.usage),
        "modelVersion": model,
        "responseId": resp.id or new_response_id(),
    }
