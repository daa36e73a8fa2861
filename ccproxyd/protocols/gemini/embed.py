"""Gemini ``:embedContent`` and ``:batchEmbedContents``, both directions.

``embedContent {content: {parts}, taskType, title, outputDimensionality}`` →
``{embedding: {values}}``; ``batchEmbedContents {requests: [...]}`` →
``{embeddings: [{values}]}``. The text parts of one content are one input. As
an upstream, every batch goes to ``batchEmbedContents`` (the google-genai SDK
does the same). The Developer API reports no token usage for embeddings.
"""

from __future__ import annotations

from typing import Any

import orjson

from ...errors import ClientError
from ...ir_embed import EmbedRequest, EmbedResponse, floats
from ..base import UpstreamCall, UpstreamTarget
from ..fields import check, integer, opt

BATCH_LIMIT = 100  # requests per batchEmbedContents call
TASK_TYPES = frozenset({
    "TASK_TYPE_UNSPECIFIED", "RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY", "CLASSIFICATION",
    "CLUSTERING", "QUESTION_ANSWERING", "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY",
})


def decode_request(body: dict[str, Any], model: str, batch: bool) -> EmbedRequest:
    if not batch:
        text, options = _one(body, "")
        return EmbedRequest(model, [text], **options)
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise ClientError("requests must be a non-empty array of embedContent requests", param="requests")
    inputs, first = [], None
    for i, item in enumerate(requests):
        check(item, dict, f"requests[{i}]")
        text, options = _one(item, f"requests[{i}].")
        if first is None:
            first = options
        elif options != first:
            raise ClientError(
                f"requests[{i}] asks for other taskType/title/outputDimensionality than requests[0]; ccproxyd embeds a batch with one set",
                param=f"requests[{i}]",
            )
        inputs.append(text)
    return EmbedRequest(model, inputs, **(first or {}))


def _one(body: dict[str, Any], at: str) -> tuple[str, dict[str, Any]]:
    content = body.get("content")
    if not isinstance(content, dict) or not isinstance(content.get("parts"), list):
        raise ClientError(f"{at}content must be an object with parts", param=f"{at}content")
    texts = []
    for j, part in enumerate(content["parts"]):
        check(part, dict, f"{at}content.parts[{j}]")
        if not isinstance(part.get("text"), str):
            raise ClientError(f"{at}content.parts[{j}] must be a text part; only text can be embedded", param=f"{at}content.parts[{j}]")
        texts.append(part["text"])
    if not texts:
        raise ClientError(f"{at}content.parts must not be empty", param=f"{at}content.parts")
    task_type = opt(body, "taskType", str, at)
    if task_type is not None and task_type not in TASK_TYPES:
        raise ClientError(f"{at}taskType must be one of {', '.join(sorted(TASK_TYPES))}; got {task_type!r}", param=f"{at}taskType")
    dimensions = integer(body, "outputDimensionality", at)
    if dimensions is not None and dimensions < 1:
        raise ClientError(f"{at}outputDimensionality must be at least 1", param=f"{at}outputDimensionality")
    return "\n".join(texts), {"dimensions": dimensions, "task_type": task_type, "title": opt(body, "title", str, at)}


def encode_response(resp: EmbedResponse, batch: bool) -> dict[str, Any]:
    if batch:
        return {"embeddings": [{"values": v} for v in resp.vectors]}
    return {"embedding": {"values": resp.vectors[0]}}


def encode_request(embed: EmbedRequest, target: UpstreamTarget, headers: dict[str, str]) -> UpstreamCall:
    model = target.model.removeprefix("models/")
    one: dict[str, Any] = {"model": f"models/{model}"}
    if embed.task_type:
        one["taskType"] = embed.task_type
    if embed.title:
        one["title"] = embed.title
    if embed.dimensions is not None:
        one["outputDimensionality"] = embed.dimensions
    requests = [{**one, "content": {"parts": [{"text": text}]}} for text in embed.inputs]
    return UpstreamCall(f"{target.provider.base_url}/v1beta/models/{model}:batchEmbedContents", headers, {"requests": requests}, False)


def decode_response(body: bytes) -> EmbedResponse:
    data = orjson.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("embeddings"), list):
        raise ValueError("the answer has no embeddings list")
    return EmbedResponse([floats((e or {}).get("values"), f"embeddings[{i}].values") for i, e in enumerate(data["embeddings"])])
