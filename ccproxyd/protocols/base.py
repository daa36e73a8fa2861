"""The contract every protocol adapter implements.

An adapter speaks one wire protocol in both directions: as the *inbound* side
it decodes client requests and encodes responses, streams and errors for the
client; as the *outbound* side it encodes requests for an upstream of that
protocol and decodes its responses, streams and errors. The dispatcher only
ever talks to this interface, so adding a protocol means adding one module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, ClassVar, Mapping

from .. import ir
from ..config import Provider
from ..errors import NotFound, ProxyError, UpstreamError
from ..paths import Route
from ..toolnames import ToolNameRule


@dataclass(slots=True)
class UpstreamTarget:
    """Where one attempt goes: a provider, the upstream model name and the key to use."""

    provider: Provider
    model: str
    api_key: str | None = None
    request_id: str = ""


@dataclass(slots=True)
class UpstreamCall:
    """An encoded upstream request. ``body`` stays a dict so provider ``params`` can be merged in."""

    url: str
    headers: dict[str, str]
    body: dict[str, Any]
    stream: bool
    method: str = "POST"


@dataclass(slots=True)
class ModelInfo:
    id: str
    tools: bool = True
    vision: bool = False
    owned_by: str = "ccproxyd"
    targets: tuple[str, ...] = field(default_factory=tuple)


class StreamEncoder(ABC):
    """Turns IR events into client bytes; one instance per response, holding its state."""

    content_type: ClassVar[str] = "text/event-stream"

    def begin(self) -> bytes:
        """Bytes sent right after the headers (e.g. ``[`` of a JSON array stream)."""
        return b""

    @abstractmethod
    def encode(self, event: ir.Event) -> bytes:
        """Frames for one event; ``b""`` when the event produces nothing yet."""

    @abstractmethod
    def end(self) -> bytes:
        """Closing frames after the last event (closes open blocks, ``[DONE]``...)."""

    @abstractmethod
    def error(self, err: ProxyError) -> bytes:
        """The protocol's mid-stream error frame; the stream ends after it."""


class Adapter(ABC):
    name: ClassVar[str]
    # Upstreams that cannot fetch image URLs themselves: the dispatcher inlines them first.
    inline_images_only: ClassVar[bool] = False
    # Upstreams that refuse a request without max_tokens: the dispatcher fills in server.default_max_tokens.
    requires_max_tokens: ClassVar[bool] = False
    # What the upstream accepts as a tool name (None: anything); others are renamed by toolnames.py.
    tool_names: ClassVar[ToolNameRule | None] = None

    # ------------------------------------------------------------ inbound (client side)

    @abstractmethod
    def decode_request(self, body: dict[str, Any], route: Route, headers: Mapping[str, str]) -> ir.Request:
        """Client JSON → IR. Raise ClientError naming the field for wrong shapes."""

    @abstractmethod
    def encode_response(self, resp: ir.Response, req: ir.Request) -> dict[str, Any]:
        """IR response → the client's JSON body. ``req`` is the client's own request."""

    @abstractmethod
    def stream_encoder(self, req: ir.Request, route: Route) -> StreamEncoder: ...

    @abstractmethod
    def encode_error(self, err: ProxyError) -> tuple[int, dict[str, Any] | str]:
        """Status and body of the protocol's error shape."""

    @abstractmethod
    def encode_model_list(self, models: list[ModelInfo], route: Route) -> dict[str, Any]: ...

    def encode_count_tokens(self, tokens: int) -> dict[str, Any]:
        raise NotFound("this protocol has no token counting endpoint")

    def encode_model_info(self, model: ModelInfo) -> dict[str, Any]:
        raise NotFound("this protocol has no model info endpoint")

    def model_from_body(self, body: dict[str, Any]) -> str | None:
        """The model named in a non-chat request body (Ollama /api/show)."""
        model = body.get("model")
        return model if isinstance(model, str) else None

    def encode_version(self) -> dict[str, Any]:
        raise NotFound("this protocol has no version endpoint")

    # ------------------------------------------------------------ outbound (upstream side)

    @abstractmethod
    def encode_request(self, req: ir.Request, target: UpstreamTarget) -> UpstreamCall:
        """IR → upstream request. ``req.extras[self.name]`` holds same-protocol client fields."""

    @abstractmethod
    def decode_response(self, body: bytes) -> ir.Response: ...

    @abstractmethod
    def decode_stream(self, chunks: AsyncIterator[bytes]) -> ir.EventStream:
        """Upstream stream bytes → IR events. Unparseable data becomes a StreamError event."""

    @abstractmethod
    def decode_error(self, status: int, body: bytes) -> UpstreamError:
        """An upstream error response → UpstreamError with the upstream's message."""

    def rename_tools_in_extras(self, extras: dict[str, Any], renamed: Mapping[str, str]) -> dict[str, Any]:
        """``extras[self.name]`` with the tool names it keys by renamed (original → safe), when tools were renamed."""
        return extras

    def encode_count_tokens_request(self, req: ir.Request, target: UpstreamTarget) -> UpstreamCall | None:
        """An upstream token-count call, or None when the protocol has none."""
        return None

    def decode_count_tokens(self, body: bytes) -> int:
        raise NotImplementedError
