"""Ollama ``/api/embed`` and the legacy ``/api/embeddings``, both directions.

``/api/embed {model, input (string | list), truncate, dimensions, options,
keep_alive}`` → ``{model, embeddings, total_duration, load_duration,
prompt_eval_count}``; ``/api/embeddings {model, prompt}`` → ``{embedding}``
(one vector). As an upstream, every batch goes to ``/api/embed``.
"""

from __future__ import annotations

from typing import Any

import orjson

from ...errors import ClientError
from ...ir_embed import EmbedRequest, EmbedResponse, floats
from ..base import UpstreamCall, UpstreamTarget, bearer_headers
from ..fields import check, integer, opt, req

_HANDLED = frozenset({"model", "input", "prompt", "truncate", "dimensions"})
_TIMINGS = ("total_duration", "load_duration")


def decode_request(body: dict[str, Any], legacy: bool) -> EmbedRequest:
    model = req(body, "model", str)
    if legacy:
        prompt = check(body.get("prompt", ""), str, "prompt")
        inputs = [prompt] if prompt else []  # nothing to embed: Ollama answers an empty vector
    else:
        raw = req(body, "input", (str, list))
        inputs = [raw] if isinstance(raw, str) else [check(t, str, f"input[{i}]") for i, t in enumerate(raw)]
        if not inputs:
            raise ClientError("input must not be empty", param="input")
    dimensions = integer(body, "dimensions")
    if dimensions is not None and dimensions < 1:
        raise ClientError("dimensions must be at least 1", param="dimensions")
    extras = {k: v for k, v in body.items() if k not in _HANDLED}
    return EmbedRequest(model, inputs, dimensions=dimensions, truncate=opt(body, "truncate", bool), extras={"ollama": extras} if extras else {})


def encode_response(resp: EmbedResponse, client_req: EmbedRequest, legacy: bool) -> dict[str, Any]:
    """Timings only from an Ollama upstream: like Ollama, leave out what was not measured."""
    if legacy:
        return {"embedding": resp.vectors[0] if resp.vectors else []}
    out: dict[str, Any] = {"model": client_req.model, "embeddings": resp.vectors}
    out.update(resp.raw or {})
    out["prompt_eval_count"] = resp.input_tokens or 0
    return out


def encode_request(embed: EmbedRequest, target: UpstreamTarget) -> UpstreamCall:
    body: dict[str, Any] = {"model": target.model, "input": list(embed.inputs)}
    if embed.truncate is not None:
        body["truncate"] = embed.truncate
    if embed.dimensions is not None:
        body["dimensions"] = embed.dimensions
    for key, value in embed.extras.get("ollama", {}).items():
        body.setdefault(key, value)
    return UpstreamCall(f"{target.provider.base_url}/api/embed", bearer_headers(target.api_key), body, False)


def decode_response(body: bytes) -> EmbedResponse:
    data = orjson.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("embeddings"), list):
        raise ValueError("the answer has no embeddings list")
    vectors = [floats(v, f"embeddings[{i}]") for i, v in enumerate(data["embeddings"])]
    tokens = data.get("prompt_eval_count")
    raw = {k: data[k] for k in _TIMINGS if isinstance(data.get(k), int) and not isinstance(data.get(k), bool)}
    model = data.get("model")
    return EmbedResponse(vectors, model if isinstance(model, str) else "", tokens if isinstance(tokens, int) else None, raw or None)
