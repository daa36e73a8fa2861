"""Anthropic Claude Messages, both as the client's protocol and as an upstream's.

The package is split by concern: ``inbound`` decodes client requests,
``outbound`` encodes upstream requests (and repairs what Claude would reject),
``response`` handles whole messages and errors, ``stream`` both stream
directions, ``wire`` the shared vocabulary (stop reasons, error types, usage).
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Mapping

import orjson

from ... import ir
from ...errors import ProxyError, UpstreamError
from ...paths import Route
from ..base import Adapter, ModelInfo, StreamEncoder, UpstreamCall, UpstreamTarget
from ...toolnames import ToolNameRule
from . import inbound, outbound, response, stream
from .stream import ClaudeStreamDecoder, ClaudeStreamEncoder
from .wire import TOOL_FIELDS_KEY


class ClaudeAdapter(Adapter):
    name = "claude"
    requires_max_tokens = True
    # ^[a-zA-Z0-9_-]{1,64}$ (Anthropic tool-use docs; no dots, unlike MCP names)
    tool_names = ToolNameRule("A-Za-z0-9_-", 64)

    # ------------------------------------------------------------ inbound

    def decode_request(self, body: dict[str, Any], route: Route, headers: Mapping[str, str]) -> ir.Request:
        return inbound.decode_request(body, headers)

    def encode_response(self, resp: ir.Response, req: ir.Request) -> dict[str, Any]:
        return response.encode_response(resp, req)

    def stream_encoder(self, req: ir.Request, route: Route) -> StreamEncoder:
        return ClaudeStreamEncoder(req)

    def encode_error(self, err: ProxyError) -> tuple[int, dict[str, Any]]:
        return response.encode_error(err)

    def encode_model_list(self, models: list[ModelInfo], route: Route) -> dict[str, Any]:
        return response.encode_model_list(models)

    def encode_count_tokens(self, tokens: int) -> dict[str, Any]:
        return {"input_tokens": tokens}

    # ------------------------------------------------------------ outbound

    def encode_request(self, req: ir.Request, target: UpstreamTarget) -> UpstreamCall:
        return outbound.encode_request(req, target)

    def decode_response(self, body: bytes) -> ir.Response:
        return response.decode_response(body)

    def decode_stream(self, chunks: AsyncIterator[bytes]) -> ir.EventStream:
        return stream.decode_stream(chunks)

    def decode_error(self, status: int, body: bytes) -> UpstreamError:
        return response.decode_error(status, body)

    def encode_count_tokens_request(self, req: ir.Request, target: UpstreamTarget) -> UpstreamCall | None:
        return outbound.encode_count_tokens_request(req, target)

    def rename_tools_in_extras(self, extras: dict[str, Any], renamed: Mapping[str, str]) -> dict[str, Any]:
        fields = extras.get(self.name, {}).get(TOOL_FIELDS_KEY)
        if not fields:
            return extras
        same = {**extras[self.name], TOOL_FIELDS_KEY: {renamed.get(name, name): f for name, f in fields.items()}}
        return {**extras, self.name: same}

    def decode_count_tokens(self, body: bytes) -> int:
        return response.decode_count_tokens(body)

    # ------------------------------------------------------------ model discovery

    def encode_list_models_request(self, target: UpstreamTarget) -> UpstreamCall | None:
        headers = {"anthropic-version": outbound.API_VERSION}
        if target.api_key:
            headers["x-api-key"] = target.api_key
        return UpstreamCall(f"{target.provider.base_url}/v1/models?limit=1000", headers, {}, False, "GET")

    def decode_list_models(self, body: bytes) -> list[ModelInfo]:
        data = orjson.loads(body).get("data")
        return [ModelInfo(m["id"], vision=True) for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]


ADAPTER = ClaudeAdapter()

__all__ = ["ADAPTER", "ClaudeAdapter", "ClaudeStreamDecoder", "ClaudeStreamEncoder"]
