"""OpenAI ``/v1/embeddings``, both as the client's endpoint and as an upstream's.

Inputs are a string, a list of strings, a token array or a list of token
arrays; ``encoding_format: base64`` answers each vector as little-endian
float32 bytes in base64 (the official Python SDK asks for it by default and
decodes it). The upstream is always asked for floats: not every
OpenAI-compatible server knows base64.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson

from ..errors import ClientError
from ..ir_embed import EmbedInput, EmbedRequest, EmbedResponse, floats
from .base import UpstreamCall, UpstreamTarget, bearer_headers
from .fields import check, integer, opt, req

BATCH_LIMIT = 2048  # inputs per request, per the API reference
_HANDLED = frozenset({"model", "input", "encoding_format", "dimensions"})


def decode_request(body: dict[str, Any]) -> EmbedRequest:
    model = req(body, "model", str)
    inputs = _inputs(req(body, "input", (str, list)))
    fmt = opt(body, "encoding_format", str)
    if fmt not in (None, "float", "base64"):
        raise ClientError(f"encoding_format must be \"float\" or \"base64\", got {fmt!r}", param="encoding_format")
    dimensions = integer(body, "dimensions")
    if dimensions is not None and dimensions < 1:
        raise ClientError("dimensions must be at least 1", param="dimensions")
    extras = {k: v for k, v in body.items() if k not in _HANDLED}
    return EmbedRequest(model, inputs, dimensions=dimensions, extras={"openai": {**extras, "encoding_format": fmt or "float"}})


def _inputs(raw: str | list[Any]) -> list[EmbedInput]:
    if isinstance(raw, str):
        raw = [raw]
    if not raw:
        raise ClientError("input must not be empty", param="input")
    if all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
        return [list(raw)]  # one token array
    out: list[EmbedInput] = []
    for i, item in enumerate(raw):
        check(item, (str, list), f"input[{i}]")
        if isinstance(item, list) and not all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            raise ClientError(f"input[{i}] must be a string or an array of token ids (integers)", param=f"input[{i}]")
        if not item:
            raise ClientError(f"input[{i}] must not be empty", param=f"input[{i}]")
        out.append(item)
    return out


def encode_response(resp: EmbedResponse, client_req: EmbedRequest) -> dict[str, Any]:
    as_base64 = client_req.extras.get("openai", {}).get("encoding_format") == "base64"
    tokens = resp.input_tokens or 0
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _base64(v) if as_base64 else v}
            for i, v in enumerate(resp.vectors)
        ],
        "model": client_req.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def encode_request(embed: EmbedRequest, target: UpstreamTarget) -> UpstreamCall:
    body: dict[str, Any] = {"model": target.model, "input": list(embed.inputs), "encoding_format": "float"}
    if embed.dimensions is not None:
        body["dimensions"] = embed.dimensions
    for key, value in embed.extras.get("openai", {}).items():
        body.setdefault(key, value)  # encoding_format is already set: the upstream always answers floats
    return UpstreamCall(f"{target.provider.base_url}/embeddings", bearer_headers(target.api_key), body, False)


def decode_response(body: bytes) -> EmbedResponse:
    data = orjson.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError("the answer has no data list")
    items = sorted(data["data"], key=lambda d: d.get("index", 0) if isinstance(d, dict) else 0)
    vectors = []
    for i, item in enumerate(items):
        value = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(value, str):  # a server that answers base64 even when asked for floats
            raw = base64.b64decode(value)
            vectors.append(list(struct.unpack(f"<{len(raw) // 4}f", raw)))
        else:
            vectors.append(floats(value, f"data[{i}].embedding"))
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    tokens = usage.get("prompt_tokens")
    model = data.get("model")
    return EmbedResponse(vectors, model if isinstance(model, str) else "", tokens if isinstance(tokens, int) else None)
