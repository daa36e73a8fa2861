"""Ollama ``/api/generate``: a prompt completion, both directions.

Decoded into an ordinary ``ir.Request`` (the prompt as one user turn, see
``protocols/completion.py``) with ``completion`` set, so it reaches every chat
upstream; an Ollama upstream gets ``/api/generate`` itself with the client's
prompt, suffix and ``raw`` unchanged. Answers are chat answers with
``response`` (and ``thinking``) in place of ``message``. An empty prompt only
loads the model: Ollama answers ``done_reason: "load"`` at once, and so does
ccproxyd, without calling an upstream.
"""

from __future__ import annotations

import time
from typing import Any

from ... import ir
from ...errors import ClientError
from ..base import UpstreamCall, UpstreamTarget, bearer_headers
from ..completion import prompt_message
from . import inbound, outbound
from .response import encode_response as encode_chat_response
from .stream import OllamaStreamEncoder
from .wire import now_rfc3339, shows_thinking

# Fields with an IR slot or read here; the rest (keep_alive, template, context...) go to an Ollama upstream only.
_HANDLED = frozenset({"model", "prompt", "suffix", "system", "images", "raw", "think", "format", "options", "stream"})


def decode_request(body: dict[str, Any]) -> ir.Request:
    prompt, suffix, system = (_string(body, key) for key in ("prompt", "suffix", "system"))
    raw = body.get("raw", False)
    if not isinstance(raw, bool):
        raise ClientError("raw must be a boolean", param="raw")
    if raw and suffix:
        raise ClientError("raw mode does not support suffix", param="suffix")
    images = inbound.decode_images(body.get("images"), "images")
    # The chat decoder checks model, options, think, format and stream the same way for both endpoints.
    req = inbound.decode_request({k: v for k, v in body.items() if k in _HANDLED and k not in ("prompt", "suffix", "system", "images", "raw")})
    req.messages = [prompt_message(prompt, suffix or None, images)] if prompt or images else []
    req.system = [ir.Text(system)] if system else []
    extras = {**req.extras.get("ollama", {}), **{k: v for k, v in body.items() if k not in _HANDLED}}
    req.extras = {"ollama": extras} if extras else {}
    req.completion = ir.Completion("ollama", prompt, suffix or None, raw)
    return req


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ClientError(f"{key} must be a string", param=key)
    return value


def load_reply(req: ir.Request) -> dict[str, Any] | None:
    """Ollama's answer to an empty prompt: the model is loaded, nothing generated."""
    if req.messages:
        return None
    return {"model": req.model, "created_at": now_rfc3339(), "response": "", "done": True, "done_reason": "load"}


def encode_response(resp: ir.Response, req: ir.Request) -> dict[str, Any]:
    out = encode_chat_response(resp, req)
    message = out.pop("message")
    out["response"] = message["content"]
    if "thinking" in message:
        out["thinking"] = message["thinking"]
    if "total_duration" not in out and req.completion is not None:  # not from an Ollama upstream: measured here
        out["total_duration"] = max(1, time.monotonic_ns() - req.completion.received_ns)
    return _in_order(out)


def _in_order(out: dict[str, Any]) -> dict[str, Any]:
    """model, created_at, response, thinking first, as Ollama writes them."""
    first = {k: out.pop(k) for k in ("model", "created_at", "response", "thinking") if k in out}
    return {**first, **out}


class GenerateStreamEncoder(OllamaStreamEncoder):
    """The chat NDJSON stream with ``response``/``thinking`` in place of ``message``."""

    def _body(self, message: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"response": message.get("content", "")}
        if message.get("thinking"):
            body["thinking"] = message["thinking"]
        return body


def stream_encoder(req: ir.Request) -> GenerateStreamEncoder:
    return GenerateStreamEncoder(req.model, shows_thinking(req))


def encode_request(req: ir.Request, target: UpstreamTarget) -> UpstreamCall:
    """To an Ollama upstream: ``/api/generate`` with the client's prompt; the chat encoder's options,
    think and format, and the system text (which group prompt injection may have changed)."""
    completion = req.completion
    assert completion is not None
    chat = outbound.encode_request(req, target).body
    body: dict[str, Any] = {"model": target.model, "prompt": completion.prompt, "stream": req.stream}
    if completion.suffix:
        body["suffix"] = completion.suffix
    if completion.raw:
        body["raw"] = True
    system = outbound.TEXT_JOINER.join(p.text for p in req.system if isinstance(p, ir.Text) and p.text)
    if system:
        body["system"] = system
    images = [img for m in chat["messages"] for img in m.get("images", ())]
    if images:
        body["images"] = images
    for key, value in chat.items():
        if key not in ("messages", "tools"):
            body.setdefault(key, value)
    return UpstreamCall(f"{target.provider.base_url}/api/generate", bearer_headers(target.api_key), body, req.stream)
