"""The Ollama ``/api/chat`` protocol, as client side and as upstream.

Split by concern: ``inbound`` decodes client requests, ``outbound`` encodes
upstream requests, ``response`` and ``stream`` carry answers both ways,
``models`` serves the model endpoints and ``wire`` holds what they share.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Mapping

from ... import ir
from ...errors import ProxyError, UpstreamError
from ...ir_embed import EmbedRequest, EmbedResponse
from ...paths import Route
from ..base import Adapter, ModelInfo, UpstreamCall, UpstreamTarget, bearer_headers
from . import embed, generate, inbound, models, outbound, response, stream, wire
from .stream import OllamaStreamEncoder

__all__ = ["ADAPTER", "OllamaAdapter", "OllamaStreamEncoder"]


class OllamaAdapter(Adapter):
    name = "ollama"
    inline_images_only = True  # Ollama takes base64 only; the dispatcher fetches URL images first
    can_embed = True

    # ------------------------------------------------------------ inbound

    def decode_request(self, body: dict[str, Any], route: Route, headers: Mapping[str, str]) -> ir.Request:
        if route.action == "generate":
            return generate.decode_request(body)
        return inbound.decode_request(body)

    def encode_response(self, resp: ir.Response, req: ir.Request) -> dict[str, Any]:
        if req.completion is not None:
            return generate.encode_response(resp, req)
        return response.encode_response(resp, req)

    def stream_encoder(self, req: ir.Request, route: Route) -> OllamaStreamEncoder:
        if req.completion is not None:
            return generate.stream_encoder(req)
        return OllamaStreamEncoder(req.model, wire.shows_thinking(req))

    def answer_locally(self, req: ir.Request) -> dict[str, Any] | None:
        return generate.load_reply(req) if req.completion is not None else None

    def encode_error(self, err: ProxyError) -> tuple[int, dict[str, Any] | str]:
        return wire.encode_error(err)

    def encode_model_list(self, models_: list[ModelInfo], route: Route) -> dict[str, Any]:
        return models.encode_model_list(models_)

    def encode_model_info(self, model: ModelInfo) -> dict[str, Any]:
        return models.encode_model_info(model)

    def model_from_body(self, body: dict[str, Any]) -> str | None:
        return models.model_from_body(body)

    def encode_version(self, version: str | None = None) -> dict[str, Any]:
        return models.encode_version(version)

    # ------------------------------------------------------------ outbound

    def encode_request(self, req: ir.Request, target: UpstreamTarget) -> UpstreamCall:
        if req.completion is not None:  # /api/generate and /v1/completions stay prompt completions
            return generate.encode_request(req, target)
        return outbound.encode_request(req, target)

    def decode_response(self, body: bytes) -> ir.Response:
        return response.decode_response(body)

    def decode_stream(self, chunks: AsyncIterator[bytes]) -> ir.EventStream:
        return stream.decode_stream(chunks)

    def decode_error(self, status: int, body: bytes) -> UpstreamError:
        return wire.decode_error(status, body)

    # ------------------------------------------------------------ model discovery

    def encode_list_models_request(self, target: UpstreamTarget) -> UpstreamCall | None:
        return UpstreamCall(f"{target.provider.base_url}/api/tags", bearer_headers(target.api_key), {}, False, "GET")

    def decode_list_models(self, body: bytes) -> list[ModelInfo]:
        return models.decode_model_list(body)

    def encode_show_request(self, target: UpstreamTarget) -> UpstreamCall | None:
        return UpstreamCall(f"{target.provider.base_url}/api/show", bearer_headers(target.api_key), {"model": target.model}, False)

    def decode_show_capabilities(self, body: bytes) -> tuple[str, ...] | None:
        return models.decode_capabilities(body)

    # ------------------------------------------------------------ embeddings

    def decode_embed_request(self, body: dict[str, Any], route: Route) -> EmbedRequest:
        return embed.decode_request(body, legacy=route.action == "embed_legacy")

    def encode_embed_response(self, resp: EmbedResponse, req: EmbedRequest, route: Route) -> dict[str, Any]:
        return embed.encode_response(resp, req, legacy=route.action == "embed_legacy")

    def encode_embed_request(self, req: EmbedRequest, target: UpstreamTarget) -> UpstreamCall:
        return embed.encode_request(req, target)

    def decode_embed_response(self, body: bytes) -> EmbedResponse:
        return embed.decode_response(body)


ADAPTER = OllamaAdapter()
