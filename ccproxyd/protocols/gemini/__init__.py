"""Google Gemini generateContent, both as the client's protocol and as an upstream's.

``request`` converts bodies, ``response`` whole responses, upstream streams
and errors, ``stream`` encodes streams for Gemini clients, ``schema`` turns
JSON Schema into the subset Gemini accepts, ``wire`` holds the vocabulary.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Mapping

import orjson

from ... import ir
from ...errors import ClientError, ProxyError, UpstreamError
from ...ir_embed import EmbedRequest, EmbedResponse
from ...paths import Route
from ..base import Adapter, ModelInfo, StreamEncoder, UpstreamCall, UpstreamTarget
from ...toolnames import ToolNameRule
from . import embed, request, response
from .stream import GeminiStreamEncoder
from .wire import error_body, error_status

_METHODS = ["generateContent", "streamGenerateContent", "countTokens"]
_EMBED_METHODS = ["embedContent", "batchEmbedContents"]
# ccproxyd cannot know an alias's real limits; these are the current Gemini models' and only informative
_INPUT_TOKEN_LIMIT = 1_048_576
_OUTPUT_TOKEN_LIMIT = 65_536


def _model_path(model: str) -> str:
    return model.removeprefix("models/")


def _include_thoughts(req: ir.Request) -> bool:
    return bool(req.reasoning and req.reasoning.enabled and req.reasoning.include_thoughts)


class GeminiAdapter(Adapter):
    name = "gemini"
    # FunctionDeclaration.name: starts with a letter or underscore; a-z, A-Z, 0-9, _ . : -; at most 64
    tool_names = ToolNameRule("A-Za-z0-9_.:-", 64, first="A-Za-z_")
    inline_images_only = True
    can_embed = True
    embed_batch_limit = embed.BATCH_LIMIT

    # ------------------------------------------------------------ inbound

    def decode_request(self, body: dict[str, Any], route: Route, headers: Mapping[str, str]) -> ir.Request:
        model = _model_path(route.model or "")
        if not model:
            raise ClientError("the model is missing from the path (/v1beta/models/{model}:generateContent)", param="model")
        req = request.decode(body, model, count_tokens=route.action == "count_tokens")
        req.stream = bool(route.stream)
        return req

    def encode_response(self, resp: ir.Response, req: ir.Request) -> dict[str, Any]:
        return response.encode_response(resp, req.model, _include_thoughts(req))

    def stream_encoder(self, req: ir.Request, route: Route) -> StreamEncoder:
        return GeminiStreamEncoder(req, sse=route.gemini_sse)

    def encode_error(self, err: ProxyError) -> tuple[int, dict[str, Any]]:
        return error_status(err.status, err.kind), error_body(err.status, err.kind, err.message, getattr(err, "retry_after", None))

    def encode_model_list(self, models: list[ModelInfo], route: Route) -> dict[str, Any]:
        """One page with every alias; google-genai's pager stops when nextPageToken is absent."""
        return {
            "models": [
                {
                    "name": f"models/{m.id}",
                    "baseModelId": m.id,
                    "version": "001",
                    "displayName": m.id,
                    "description": "A ccproxyd model alias",
                    "inputTokenLimit": _INPUT_TOKEN_LIMIT,
                    "outputTokenLimit": _OUTPUT_TOKEN_LIMIT,
                    "supportedGenerationMethods": list(_EMBED_METHODS if m.kind == "embedding" else _METHODS),
                }
                for m in models
            ]
        }

    def encode_count_tokens(self, tokens: int) -> dict[str, Any]:
        return {"totalTokens": tokens}

    # ------------------------------------------------------------ outbound

    def encode_request(self, req: ir.Request, target: UpstreamTarget) -> UpstreamCall:
        model = _model_path(target.model)
        method = "streamGenerateContent?alt=sse" if req.stream else "generateContent"
        url = f"{target.provider.base_url}/v1beta/models/{model}:{method}"
        return UpstreamCall(url, self._headers(target), request.encode(req, model), req.stream)

    def encode_count_tokens_request(self, req: ir.Request, target: UpstreamTarget) -> UpstreamCall | None:
        """countTokens takes system instructions and tools only inside a whole generateContentRequest."""
        model = _model_path(target.model)
        body = {"generateContentRequest": {"model": f"models/{model}", **request.encode(req, model)}}
        url = f"{target.provider.base_url}/v1beta/models/{model}:countTokens"
        return UpstreamCall(url, self._headers(target), body, False)

    @staticmethod
    def _headers(target: UpstreamTarget) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if target.api_key:
            headers["x-goog-api-key"] = target.api_key
        return headers

    def decode_response(self, body: bytes) -> ir.Response:
        return response.decode_response(body)

    def decode_stream(self, chunks: AsyncIterator[bytes]) -> ir.EventStream:
        return response.decode_stream(chunks)

    def decode_error(self, status: int, body: bytes) -> UpstreamError:
        return response.decode_error(status, body)

    def decode_count_tokens(self, body: bytes) -> int:
        return response.decode_count_tokens(body)

    # ------------------------------------------------------------ model discovery

    def encode_list_models_request(self, target: UpstreamTarget) -> UpstreamCall | None:
        return UpstreamCall(f"{target.provider.base_url}/v1beta/models?pageSize=1000", self._headers(target), {}, False, "GET")

    def decode_list_models(self, body: bytes) -> list[ModelInfo]:
        """``supportedGenerationMethods`` tells embedding models (embedContent only) from the others."""
        found = []
        for m in orjson.loads(body).get("models") or ():
            if not isinstance(m, dict) or not isinstance(m.get("name"), str):
                continue
            methods = m.get("supportedGenerationMethods") or []
            kind = "embedding" if "generateContent" not in methods and any("mbed" in x for x in methods) else "chat"
            found.append(ModelInfo(_model_path(m["name"]), vision=kind == "chat", kind=kind))
        return found

    # ------------------------------------------------------------ embeddings

    def decode_embed_request(self, body: dict[str, Any], route: Route) -> EmbedRequest:
        model = _model_path(route.model or "")
        if not model:
            raise ClientError("the model is missing from the path (/v1beta/models/{model}:embedContent)", param="model")
        return embed.decode_request(body, model, batch=route.action == "embed_batch")

    def encode_embed_response(self, resp: EmbedResponse, req: EmbedRequest, route: Route) -> dict[str, Any]:
        return embed.encode_response(resp, batch=route.action == "embed_batch")

    def encode_embed_request(self, req: EmbedRequest, target: UpstreamTarget) -> UpstreamCall:
        return embed.encode_request(req, target, self._headers(target))

    def decode_embed_response(self, body: bytes) -> EmbedResponse:
        return embed.decode_response(body)


ADAPTER = GeminiAdapter()

__all__ = ["ADAPTER", "GeminiAdapter"]
