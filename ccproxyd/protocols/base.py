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
from ..errors import ClientError, NotFound, ProxyError, UpstreamError
from ..ir_embed import EmbedRequest, EmbedResponse
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
    kind: str = "chat"  # chat | embedding
    capabilities: tuple[str, ...] | None = None  # an upstream's own word (discovered Ollama models), else derived


def bearer_headers(api_key: str | None) -> dict[str, str]:
    """JSON request headers with ``Authorization: Bearer`` when there is a key (OpenAI, Ollama)."""
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


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


class Relay(ABC):
    """A plain client request, which an upstream of the client's own protocol gets without the unified model in
    between (see :meth:`Adapter.relay`). It does not stream, continues no stored conversation, is not answered
    locally, and has no tools, tool calls, images or files: the steps of the general path that read those have
    nothing to do. What it gives is byte for byte what the general path would (tests/test_relay.py)."""

    __slots__ = ()
    model: str

    @abstractmethod
    def request(self) -> ir.Request:
        """The request decoded, as ``decode_request`` gives it: for what the relay does not cover."""

    @abstractmethod
    def call(self, target: UpstreamTarget) -> UpstreamCall:
        """``encode_request``'s call for :meth:`request` when shaping changes nothing."""

    @abstractmethod
    def answer(self, body: bytes) -> tuple[dict[str, Any], ir.Usage] | None:
        """The client's answer to the upstream's whole ``body`` and its usage; None when the body is not a plain
        answer with the token counts in it (then the general path reads it, and fills in or refuses)."""


class Adapter(ABC):
    name: ClassVar[str]
    # Upstreams that cannot fetch image URLs themselves: the dispatcher inlines them first.
    inline_images_only: ClassVar[bool] = False
    # Upstreams that refuse a request without max_tokens: the dispatcher fills in server.default_max_tokens.
    requires_max_tokens: ClassVar[bool] = False
    # Upstreams with an embeddings API, and the most inputs one call of it takes (None: no limit).
    can_embed: ClassVar[bool] = False
    embed_batch_limit: ClassVar[int | None] = None
    embeds_token_arrays: ClassVar[bool] = False  # inputs given as token ids, not text (OpenAI's embeddings API)
    # What the upstream accepts as a tool name (None: anything); others are renamed by toolnames.py.
    tool_names: ClassVar[ToolNameRule | None] = None

    # ------------------------------------------------------------ inbound (client side)

    @abstractmethod
    def decode_request(self, body: dict[str, Any], route: Route, headers: Mapping[str, str]) -> ir.Request:
        """Client JSON → IR. Raise ClientError naming the field for wrong shapes."""

    @abstractmethod
    def encode_response(self, resp: ir.Response, req: ir.Request) -> dict[str, Any]:
        """IR response → the client's JSON body. ``req`` is the client's own request."""

    def relay(self, body: dict[str, Any], route: Route, headers: Mapping[str, str]) -> Relay | None:
        """The request as a :class:`Relay` when it is plain enough to go to an upstream of this protocol
        as it came; None for every other (the general path decodes it, and refuses what is wrong)."""
        return None

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

    def encode_version(self, version: str | None = None) -> dict[str, Any]:
        """``version``: what to report (``server.ollama_version``); None: the adapter's default."""
        raise NotFound("this protocol has no version endpoint")

    def answer_locally(self, req: ir.Request) -> dict[str, Any] | None:
        """An answer the protocol gives without any upstream (Ollama's "model loaded" to an empty prompt)."""
        return None

    # ------------------------------------------------------------ stored conversations (protocols that keep state)

    def continues(self, req: ir.Request) -> str | None:
        """The id of the stored conversation this request continues, if any."""
        return None

    def resume(self, req: ir.Request, record: dict[str, Any]) -> ir.Request:
        """``req`` with the stored conversation ``record`` put in front of it."""
        return req

    def keeps(self, req: ir.Request) -> bool:
        """Whether the exchange is to be stored once it finishes (then :meth:`to_store` says how)."""
        return False

    def to_store(self, req: ir.Request, resp: ir.Response) -> tuple[str, dict[str, Any]] | None:
        """The id and record to keep of a finished exchange; None keeps nothing."""
        return None

    def encode_stored(self, response_id: str, record: dict[str, Any] | None) -> dict[str, Any]:
        """A stored record as the client reads it (GET), or the answer to its deletion (``record`` None)."""
        raise NotFound("this protocol keeps no stored conversations")

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

    def streams_usage(self, provider: Provider) -> bool:
        """Whether this upstream's streams report token usage (the dispatcher estimates what is missing)."""
        return True

    def check_request(self, req: ir.Request) -> None:
        """Refuse, before any call, what the request asks of this upstream and cannot be given."""
        choice = req.tool_choice
        if choice and choice.mode == "tool" and choice.name not in {t.name for t in req.tools}:
            raise ClientError(f"tool_choice forces the tool {choice.name!r}, which this upstream ({self.name}) does not have", param="tool_choice")

    def rename_tools_in_extras(self, extras: dict[str, Any], renamed: Mapping[str, str]) -> dict[str, Any]:
        """``extras[self.name]`` with the tool names it keys by renamed (original → safe), when tools were renamed."""
        return extras

    def encode_count_tokens_request(self, req: ir.Request, target: UpstreamTarget) -> UpstreamCall | None:
        """An upstream token-count call, or None when the protocol has none."""
        return None

    def decode_count_tokens(self, body: bytes) -> int:
        raise NotImplementedError

    # ------------------------------------------------------------ model discovery (see discovery.py)

    def encode_list_models_request(self, target: UpstreamTarget) -> UpstreamCall | None:
        """A GET of the upstream's own model list; None when the protocol has none."""
        return None

    def decode_list_models(self, body: bytes) -> list[ModelInfo]:
        raise NotImplementedError

    def encode_show_request(self, target: UpstreamTarget) -> UpstreamCall | None:
        """One model's details, when the list leaves out its capabilities (Ollama /api/show); None: not needed."""
        return None

    def decode_show_capabilities(self, body: bytes) -> tuple[str, ...] | None:
        return None

    # ------------------------------------------------------------ embeddings (see embeddings.py)

    def decode_embed_request(self, body: dict[str, Any], route: Route) -> EmbedRequest:
        raise NotFound("this protocol has no embeddings endpoint")

    def encode_embed_response(self, resp: EmbedResponse, req: EmbedRequest, route: Route) -> dict[str, Any]:
        raise NotFound("this protocol has no embeddings endpoint")

    def encode_embed_request(self, req: EmbedRequest, target: UpstreamTarget) -> UpstreamCall:
        raise ClientError(f"{self.name} upstreams cannot make embeddings")

    def decode_embed_response(self, body: bytes) -> EmbedResponse:
        raise NotImplementedError
