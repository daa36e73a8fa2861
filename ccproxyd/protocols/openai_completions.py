"""OpenAI's legacy ``/v1/completions`` (editor autocomplete): request decoding and the whole answer.

``prompt`` (one string), ``suffix``, ``max_tokens``, ``temperature``, ``top_p``,
``stop``, ``seed``, ``stream``. An OpenAI upstream gets the body as sent; other
upstreams get the prompt as a chat turn (protocols/completion.py). One
completion per request: ``n`` or ``best_of`` above 1 and ``echo`` are refused.
"""

from __future__ import annotations

import time
from typing import Any

from .. import ir
from ..errors import ClientError
from .base import UpstreamCall, UpstreamTarget, bearer_headers
from .completion import prompt_message
from .fields import integer, number, opt, req, string_list

_KNOWN = frozenset({"model", "prompt", "suffix", "max_tokens", "temperature", "top_p", "stop", "seed", "stream"})


def decode_request(body: dict[str, Any]) -> ir.Request:
    model = req(body, "model", str)
    prompt = _prompt(body.get("prompt"))
    suffix = opt(body, "suffix", str) or None
    for key in ("n", "best_of"):
        if (integer(body, key) or 1) > 1:
            raise ClientError(f"{key} above 1 is not supported: ccproxyd returns one completion per request", param=key)
    if opt(body, "echo", bool):
        raise ClientError("echo is not supported", param="echo")
    max_tokens = integer(body, "max_tokens")
    return ir.Request(
        model=model,
        messages=[prompt_message(prompt, suffix)],
        max_tokens=max_tokens if max_tokens and max_tokens > 0 else None,
        temperature=number(body, "temperature"),
        top_p=number(body, "top_p"),
        seed=integer(body, "seed"),
        stop=string_list(body, "stop"),
        stream=bool(opt(body, "stream", bool)),
        extras={"openai": {k: v for k, v in body.items() if k not in _KNOWN}},
        completion=ir.Completion("openai", prompt, suffix),
    )


def _prompt(raw: Any) -> str:
    if raw is None:
        return ""
    if isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]
    if not isinstance(raw, str):
        raise ClientError("prompt must be a string (one prompt; token arrays and several prompts are not supported)", param="prompt")
    return raw


def encode_response(resp: ir.Response, request: ir.Request, finish: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "cmpl-" + ir.random_hex(),
        "object": "text_completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [{"text": ir.text_of(resp.parts), "index": 0, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }


def encode_request(request: ir.Request, target: UpstreamTarget, stream_usage: bool) -> UpstreamCall:
    """The client's body to an OpenAI upstream, with the upstream's model name."""
    completion = request.completion
    assert completion is not None
    body: dict[str, Any] = {"model": target.model, "prompt": completion.prompt}
    if completion.suffix:
        body["suffix"] = completion.suffix
    for key, value in (("max_tokens", request.max_tokens), ("temperature", request.temperature), ("top_p", request.top_p), ("seed", request.seed)):
        if value is not None:
            body[key] = value
    if request.stop:
        body["stop"] = request.stop
    for key, value in request.extras.get("openai", {}).items():
        if key != "stream_options":
            body.setdefault(key, value)
    if request.stream:
        body["stream"] = True
        if stream_usage:
            body["stream_options"] = {"include_usage": True}
    return UpstreamCall(f"{target.provider.base_url}/completions", bearer_headers(target.api_key), body, request.stream)
