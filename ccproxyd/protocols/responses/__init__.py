"""The OpenAI Responses API, both as the client's protocol and as an upstream's.

Split by concern like the other large adapters: ``inbound`` decodes client
requests (input items, namespaces, hosted tools), ``outbound`` encodes upstream
requests, ``response`` whole responses and errors, ``stream`` both stream
directions, ``wire`` the shared vocabulary (ids, usage, status, the opaque
reasoning blob), ``stored`` what is kept for ``previous_response_id``.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Mapping

import orjson

from ... import ir
from ...errors import ClientError, ProxyError, UpstreamError
from ...paths import Route
from ..base import Adapter, ModelInfo, StreamEncoder, UpstreamCall, UpstreamTarget
from ..openai import ADAPTER as OPENAI
from . import inbound, outbound, response, stored, stream, wire
from .stream import ResponsesStreamDecoder, ResponsesStreamEncoder


class ResponsesAdapter(Adapter):
    name = wire.NAME
    tool_names = OPENAI.tool_names  # function names follow the Chat Completions rule

    # ------------------------------------------------------------ inbound

    def decode_request(self, body: dict[str, Any], route: Route, headers: Mapping[str, str]) -> ir.Request:
        return inbound.decode_request(body, headers)

    def encode_response(self, resp: ir.Response, req: ir.Request) -> dict[str, Any]:
        return response.encode_response(resp, req)

    def stream_encoder(self, req: ir.Request, route: Route) -> StreamEncoder:
        return ResponsesStreamEncoder(req)

    def encode_error(self, err: ProxyError) -> tuple[int, dict[str, Any]]:
        return response.encode_error(err)

    def rename_tools_in_extras(self, extras: dict[str, Any], renamed: Mapping[str, str]) -> dict[str, Any]:
        """The strict flags the client set stay with a renamed function (the only names a Responses upstream reads here)."""
        same = extras.get(self.name) or {}
        if not same.get(wire.STRICT):
            return extras
        return {**extras, self.name: {**same, wire.STRICT: sorted(renamed.get(n, n) for n in same[wire.STRICT])}}

    def encode_model_list(self, models: list[ModelInfo], route: Route) -> dict[str, Any]:
        return OPENAI.encode_model_list(models, route)

    def encode_count_tokens(self, tokens: int) -> dict[str, Any]:
        return {"object": "response.input_tokens", "input_tokens": tokens}

    # ------------------------------------------------------------ stored conversations

    def continues(self, req: ir.Request) -> str | None:
        return wire.state(req).get(wire.PREVIOUS)

    def resume(self, req: ir.Request, record: dict[str, Any]) -> ir.Request:
        return stored.resume(req, record)

    def keeps(self, req: ir.Request) -> bool:
        return bool(wire.state(req).get(wire.STORE))

    def to_store(self, req: ir.Request, resp: ir.Response) -> tuple[str, dict[str, Any]] | None:
        return stored.record(req, resp)

    def encode_stored(self, response_id: str, record: dict[str, Any] | None) -> dict[str, Any]:
        return stored.encode(response_id, record)

    # ------------------------------------------------------------ outbound

    def encode_request(self, req: ir.Request, target: UpstreamTarget) -> UpstreamCall:
        return outbound.encode_request(req, target)

    def check_request(self, req: ir.Request) -> None:
        """Hosted tools are this upstream's own: a tool_choice may force one."""
        hosted = {t.get("type") for t in wire.state(req).get(wire.HOSTED) or ()}
        choice = req.tool_choice
        if choice and choice.mode == "tool" and choice.name not in hosted and choice.name not in {t.name for t in req.tools}:
            raise ClientError(f"tool_choice forces the tool {choice.name!r}, which the request does not define", param="tool_choice")

    def encode_count_tokens_request(self, req: ir.Request, target: UpstreamTarget) -> UpstreamCall | None:
        return outbound.encode_count_tokens_request(req, target)

    def decode_count_tokens(self, body: bytes) -> int:
        count = orjson.loads(body).get("input_tokens")
        if not isinstance(count, int):
            raise ValueError("input_tokens answer has no input_tokens")
        return count

    def decode_response(self, body: bytes) -> ir.Response:
        return response.decode_response(body)

    def decode_stream(self, chunks: AsyncIterator[bytes]) -> ir.EventStream:
        return stream.decode_stream(chunks)

    def decode_error(self, status: int, body: bytes) -> UpstreamError:
        return response.decode_error(status, body)


ADAPTER = ResponsesAdapter()

__all__ = ["ADAPTER", "ResponsesAdapter", "ResponsesStreamDecoder", "ResponsesStreamEncoder"]
