"""The unified model every protocol adapter maps to and from.

Requests and responses are lists of typed parts; streams are flat sequences of
events in which every content block has a start, deltas and an end, and blocks
never interleave. Opaque values that must be echoed back next turn (thinking
signatures, Gemini thought signatures) ride in ``provider_metadata`` keyed by
protocol name, never in the shared fields.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterable, Iterator, Literal, Union

import orjson

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error", "other"]
FINISH_REASONS: frozenset[str] = frozenset(FinishReason.__args__)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- parts


@dataclass(slots=True)
class Text:
    text: str
    provider_metadata: dict[str, dict[str, Any]] | None = None


@dataclass(slots=True)
class Image:
    """An image given inline (base64 ``data``) or by ``url`` (http(s) or data: URL)."""

    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    provider_metadata: dict[str, dict[str, Any]] | None = None


@dataclass(slots=True)
class File:
    """A document given inline (base64 ``data``): a PDF or another binary file. Images stay :class:`Image`
    and text files become :class:`Text` when decoded; adapters without a file slot refuse it with a 400."""

    media_type: str
    data: str
    filename: str | None = None
    provider_metadata: dict[str, dict[str, Any]] | None = None


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]
    provider_metadata: dict[str, dict[str, Any]] | None = None


@dataclass(slots=True)
class ToolResult:
    call_id: str
    name: str
    content: list["Part"]
    is_error: bool = False
    provider_metadata: dict[str, dict[str, Any]] | None = None


@dataclass(slots=True)
class Reasoning:
    """Model thinking. ``signature`` is opaque and replayed byte for byte;
    ``redacted`` holds encrypted thinking a provider returned instead of text."""

    text: str = ""
    signature: str | None = None
    redacted: str | None = None
    provider_metadata: dict[str, dict[str, Any]] | None = None


Part = Union[Text, Image, File, ToolCall, ToolResult, Reasoning]


@dataclass(slots=True)
class Message:
    role: Role
    parts: list[Part]


# ---------------------------------------------------------------- request


@dataclass(slots=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(slots=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: str | None = None


@dataclass(slots=True)
class ReasoningConfig:
    """What the client asked of reasoning, in whichever form it used.

    ``effort`` is OpenAI/Ollama style, ``budget_tokens`` Claude/Gemini style;
    adapters convert with :func:`effort_to_budget` / :func:`budget_to_effort`.
    ``enabled=False`` means reasoning explicitly off.
    """

    enabled: bool = True
    effort: Literal["minimal", "low", "medium", "high"] | None = None
    budget_tokens: int | None = None
    include_thoughts: bool = True


@dataclass(slots=True)
class ResponseFormat:
    type: Literal["text", "json_object", "json_schema"] = "text"
    schema: dict[str, Any] | None = None
    name: str | None = None


@dataclass(slots=True)
class Request:
    model: str
    messages: list[Message]
    system: list[Part] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    response_format: ResponseFormat | None = None
    reasoning: ReasoningConfig | None = None
    parallel_tool_calls: bool | None = None
    # Whether the client asked the model to think, in its protocol's way (Claude thinking enabled or
    # adaptive, OpenAI reasoning_effort, Gemini thinkingConfig, Ollama think); routing rules read it.
    wants_thinking: bool = False
    # Tools the provider runs itself that the client offered (Claude's web_search server tool, Gemini's
    # googleSearch): neutral names such as "web_search"; their definitions stay in extras.
    builtin_tools: list[str] = field(default_factory=list)
    # Fields only the same protocol understands, keyed by protocol name:
    # forwarded only when the upstream speaks that protocol.
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Set for a prompt completion (Ollama /api/generate, OpenAI /v1/completions); see Completion.
    completion: "Completion | None" = None


@dataclass(slots=True)
class Completion:
    """A prompt-completion request as the client gave it. ``messages`` hold the same prompt as one
    user turn (fill-in-the-middle spelled out when there is a ``suffix``) for chat upstreams; an
    upstream with a completion endpoint sends ``prompt``/``suffix`` unchanged instead. ``origin`` is
    the client's protocol, whose encoder answers in its completion shape."""

    origin: str  # ollama | openai
    prompt: str
    suffix: str | None = None
    raw: bool = False  # Ollama: no prompt template
    received_ns: int = field(default_factory=time.monotonic_ns)  # for the durations a whole Ollama answer reports


# ---------------------------------------------------------------- response


@dataclass(slots=True)
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    reasoning_tokens: int | None = None
    raw: dict[str, Any] | None = None

    def merge(self, other: "Usage") -> "Usage":
        """Later non-None counts win; providers report usage piecemeal in streams."""
        return Usage(
            other.input_tokens if other.input_tokens is not None else self.input_tokens,
            other.output_tokens if other.output_tokens is not None else self.output_tokens,
            other.cached_input_tokens if other.cached_input_tokens is not None else self.cached_input_tokens,
            other.cache_creation_input_tokens if other.cache_creation_input_tokens is not None else self.cache_creation_input_tokens,
            other.reasoning_tokens if other.reasoning_tokens is not None else self.reasoning_tokens,
            {**(self.raw or {}), **(other.raw or {})} or None,
        )


@dataclass(slots=True)
class Finish:
    reason: FinishReason
    raw: str | None = None  # the upstream's own word, for logs and same-protocol clients


@dataclass(slots=True)
class Response:
    id: str
    model: str
    parts: list[Part]
    finish: Finish
    usage: Usage = field(default_factory=Usage)


# ---------------------------------------------------------------- stream events


@dataclass(slots=True)
class ResponseStart:
    """First event of every stream: the upstream's id and model, if it gave them."""

    id: str | None = None
    model: str | None = None


@dataclass(slots=True)
class TextStart:
    provider_metadata: dict[str, dict[str, Any]] | None = None


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class TextEnd:
    pass


@dataclass(slots=True)
class ReasoningStart:
    provider_metadata: dict[str, dict[str, Any]] | None = None


@dataclass(slots=True)
class ReasoningDelta:
    text: str


@dataclass(slots=True)
class ReasoningSignature:
    signature: str


@dataclass(slots=True)
class ReasoningEnd:
    pass


@dataclass(slots=True)
class RedactedReasoning:
    """A whole redacted-thinking block (Claude ``redacted_thinking``)."""

    data: str


@dataclass(slots=True)
class ToolCallStart:
    id: str
    name: str
    provider_metadata: dict[str, dict[str, Any]] | None = None


@dataclass(slots=True)
class ToolCallDelta:
    arguments: str  # a fragment of the JSON text of the arguments object


@dataclass(slots=True)
class ToolCallEnd:
    pass


@dataclass(slots=True)
class Finished:
    finish: Finish


@dataclass(slots=True)
class StreamError:
    """An error after the stream started; ends the stream."""

    kind: str
    message: str
    status: int = 500


Event = Union[
    ResponseStart,
    TextStart,
    TextDelta,
    TextEnd,
    ReasoningStart,
    ReasoningDelta,
    ReasoningSignature,
    ReasoningEnd,
    RedactedReasoning,
    ToolCallStart,
    ToolCallDelta,
    ToolCallEnd,
    Usage,
    Finished,
    StreamError,
]
EventStream = AsyncIterator[Event]


# ---------------------------------------------------------------- helpers


class BlockBuilder:
    """Turns loose deltas into well-formed, non-interleaved blocks.

    Stream decoders feed it whatever the upstream sends (a text delta, a
    reasoning delta, a tool call's first fragment) and get back the events with
    the starts and ends the encoders rely on.
    """

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open: Literal["text", "reasoning", "tool", None] = None

    def _switch(self, kind: Literal["text", "reasoning", "tool"], out: list[Event], meta: dict | None = None) -> None:
        if self.open == kind:
            return
        out.extend(self.close())
        self.open = kind
        if kind == "text":
            out.append(TextStart(meta))
        elif kind == "reasoning":
            out.append(ReasoningStart(meta))

    def text(self, text: str, meta: dict | None = None) -> list[Event]:
        out: list[Event] = []
        if text:
            self._switch("text", out, meta)
            out.append(TextDelta(text))
        return out

    def reasoning(self, text: str, meta: dict | None = None) -> list[Event]:
        out: list[Event] = []
        if text:
            self._switch("reasoning", out, meta)
            out.append(ReasoningDelta(text))
        return out

    def reasoning_start(self, meta: dict | None = None) -> list[Event]:
        """Open a reasoning block even before any text (signature-only thinking)."""
        out: list[Event] = []
        self._switch("reasoning", out, meta)
        return out

    def signature(self, signature: str) -> list[Event]:
        out: list[Event] = []
        self._switch("reasoning", out)
        out.append(ReasoningSignature(signature))
        return out

    def redacted(self, data: str) -> list[Event]:
        out = self.close()
        out.append(RedactedReasoning(data))
        return out

    def tool_start(self, id: str, name: str, meta: dict | None = None) -> list[Event]:
        out = self.close()
        self.open = "tool"
        out.append(ToolCallStart(id, name, meta))
        return out

    def tool_args(self, fragment: str) -> list[Event]:
        return [ToolCallDelta(fragment)] if fragment and self.open == "tool" else []

    def tool_call(self, id: str, name: str, arguments_json: str, meta: dict | None = None) -> list[Event]:
        """A whole tool call at once (Gemini, Ollama)."""
        out = self.tool_start(id, name, meta)
        out.append(ToolCallDelta(arguments_json))
        out.extend(self.close())
        return out

    def close(self) -> list[Event]:
        kind, self.open = self.open, None
        if kind == "text":
            return [TextEnd()]
        if kind == "reasoning":
            return [ReasoningEnd()]
        if kind == "tool":
            return [ToolCallEnd()]
        return []


def response_events(resp: Response) -> Iterator[Event]:
    """A whole response as the event sequence a stream of it would give."""
    yield ResponseStart(resp.id, resp.model)
    b = BlockBuilder()
    for part in resp.parts:
        if isinstance(part, Text):
            yield from b.close()
            yield from b.text(part.text, part.provider_metadata)
        elif isinstance(part, Reasoning):
            yield from b.close()
            if part.redacted is not None:
                yield from b.redacted(part.redacted)
                continue
            yield from b.reasoning_start(part.provider_metadata)
            if part.text:
                yield ReasoningDelta(part.text)
            if part.signature:
                yield ReasoningSignature(part.signature)
        elif isinstance(part, ToolCall):
            yield from b.tool_call(part.id, part.name, orjson.dumps(part.arguments).decode(), part.provider_metadata)
    yield from b.close()
    yield resp.usage
    yield Finished(resp.finish)


async def iterate(events: Iterable[Event]) -> EventStream:
    for e in events:
        yield e


async def collect(events: EventStream, model: str = "") -> Response:
    """Fold a stream of events into one response (for non-streaming clients)."""
    from .errors import UpstreamError

    parts: list[Part] = []
    usage = Usage()
    finish = Finish("stop")
    rid, rmodel = "", model
    text: list[str] | None = None
    text_meta: dict | None = None
    tool: tuple[str, str, dict | None, list[str]] | None = None
    reasoning: Reasoning | None = None
    async for e in events:
        if isinstance(e, ResponseStart):
            rid, rmodel = e.id or rid, e.model or rmodel
        elif isinstance(e, TextStart):
            text = []
            text_meta = e.provider_metadata
        elif isinstance(e, TextDelta) and text is not None:
            text.append(e.text)
        elif isinstance(e, TextEnd) and text is not None:
            parts.append(Text("".join(text), text_meta))
            text = None
        elif isinstance(e, ReasoningStart):
            reasoning = Reasoning("", provider_metadata=e.provider_metadata)
        elif isinstance(e, ReasoningDelta) and reasoning is not None:
            reasoning.text += e.text
        elif isinstance(e, ReasoningSignature) and reasoning is not None:
            reasoning.signature = (reasoning.signature or "") + e.signature
        elif isinstance(e, ReasoningEnd) and reasoning is not None:
            parts.append(reasoning)
            reasoning = None
        elif isinstance(e, RedactedReasoning):
            parts.append(Reasoning(redacted=e.data))
        elif isinstance(e, ToolCallStart):
            tool = (e.id, e.name, e.provider_metadata, [])
        elif isinstance(e, ToolCallDelta) and tool is not None:
            tool[3].append(e.arguments)
        elif isinstance(e, ToolCallEnd) and tool is not None:
            parts.append(ToolCall(tool[0], tool[1], parse_arguments("".join(tool[3])), tool[2]))
            tool = None
        elif isinstance(e, Usage):
            usage = usage.merge(e)
        elif isinstance(e, Finished):
            finish = e.finish
        elif isinstance(e, StreamError):
            raise UpstreamError(e.status, e.kind, e.message)
    return Response(rid, rmodel, parts, finish, usage)


def parse_arguments(text: str) -> dict[str, Any]:
    """Tool-call arguments JSON → object; what is not a JSON object is kept under ``_raw``."""
    if not text.strip():
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_raw": text}


# Reasoning effort ↔ token budget, one table for every adapter.
EFFORT_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576}


def effort_to_budget(effort: str | None) -> int:
    return EFFORT_BUDGETS.get(effort or "medium", 8192)


def budget_to_effort(budget: int | None) -> str:
    if budget is None:
        return "medium"
    if budget <= 2048:
        return "low"
    if budget <= 8192:
        return "medium"
    return "high"


def text_of(parts: Iterable[Part]) -> str:
    """The concatenated text of the Text parts (for protocols that only take a string)."""
    return "".join([p.text for p in parts if isinstance(p, Text)])  # a list joins faster than a generator


def link_tool_results(messages: list[Message]) -> None:
    """Fill in what a protocol leaves out of tool results, in place.

    OpenAI results carry only the call id (Gemini needs the function name);
    Ollama results carry only the name (Claude and OpenAI need the id). Both are
    recovered from the assistant calls earlier in the same conversation.
    """
    names: dict[str, str] = {}
    unanswered: list[ToolCall] = []
    for msg in messages:
        for part in msg.parts:
            if isinstance(part, ToolCall):
                names[part.id] = part.name
                unanswered.append(part)
            elif isinstance(part, ToolResult):
                if not part.name and part.call_id in names:
                    part.name = names[part.call_id]
                if not part.call_id:
                    match = next((c for c in unanswered if c.name == part.name), None) or (unanswered[0] if unanswered else None)
                    part.call_id = match.id if match else new_call_id()
                    if not part.name and match:
                        part.name = match.name
                unanswered = [c for c in unanswered if c.id != part.call_id]


def random_hex(chars: int = 32) -> str:
    """Random lowercase hex of ``uuid.uuid4().hex``'s shape (or its first ``chars``, at most 64), for request
    ids and the ids an answer needs. The bytes come from ``os.urandom``, 4 KiB per system call rather than
    one call per id; a forked worker starts with a pool of its own."""
    global _random_at
    at = _random_at
    if at + 32 > len(_random_pool):
        _refill_random_pool()
        at = 0
    _random_at = at + 32
    return _random_pool[at:at + 32].hex()[:chars]


def _refill_random_pool() -> None:
    global _random_pool, _random_at
    _random_pool, _random_at = os.urandom(4096), 0


_random_pool, _random_at = b"", 0
os.register_at_fork(after_in_child=_refill_random_pool)


def new_call_id() -> str:
    return "call_" + random_hex(24)


def merge_consecutive(messages: list[Message]) -> list[Message]:
    """Join runs of same-role messages, for upstreams that demand strict alternation."""
    merged: list[Message] = []
    for msg in messages:
        if merged and merged[-1].role == msg.role:
            merged[-1] = Message(msg.role, merged[-1].parts + msg.parts)
        else:
            merged.append(Message(msg.role, list(msg.parts)))
    return merged


def estimate_tokens(req: Request) -> int:
    """A rough count (4 characters a token) for count_tokens when no upstream can count."""
    chars = len(text_of(req.system))
    for msg in req.messages:
        for part in msg.parts:
            if isinstance(part, Text):
                chars += len(part.text)
            elif isinstance(part, Reasoning):
                chars += len(part.text)
            elif isinstance(part, ToolCall):
                chars += len(part.name) + len(orjson.dumps(part.arguments))
            elif isinstance(part, ToolResult):
                chars += len(text_of(part.content)) + 8
            elif isinstance(part, Image):
                chars += 1600 * 4  # images cost ~1.6k tokens on the common providers
            elif isinstance(part, File):
                chars += len(part.data) * 3 // 4  # a file counts by its decoded size: a byte a character
    for tool in req.tools:
        chars += len(tool.name) + len(tool.description) + len(orjson.dumps(tool.parameters))
    return max(1, chars // 4)
