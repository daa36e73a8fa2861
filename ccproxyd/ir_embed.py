"""The unified model of an embedding request and its answer.

Every protocol's embedding endpoint decodes into :class:`EmbedRequest` and is
answered from :class:`EmbedResponse`; the pipeline in ``embeddings.py`` splits
a request into upstream-sized batches with :meth:`EmbedRequest.batch` and joins
the answers back in order with :func:`join`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

# One input: text, or (OpenAI only) a list of token ids.
EmbedInput = str | list[int]


@dataclass(slots=True)
class EmbedRequest:
    model: str
    inputs: list[EmbedInput]
    dimensions: int | None = None
    task_type: str | None = None  # Gemini taskType (RETRIEVAL_QUERY ...)
    title: str | None = None  # Gemini title, for RETRIEVAL_DOCUMENT
    truncate: bool | None = None  # Ollama: cut inputs to the context (true) or refuse them (false)
    # Same-protocol fields with no slot here (Ollama options, OpenAI user...), keyed by protocol.
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)

    def batch(self, start: int, size: int) -> EmbedRequest:
        return replace(self, inputs=self.inputs[start : start + size])

    @property
    def has_tokens(self) -> bool:
        return any(not isinstance(i, str) for i in self.inputs)


@dataclass(slots=True)
class EmbedResponse:
    vectors: list[list[float]]
    model: str = ""
    input_tokens: int | None = None
    raw: dict[str, Any] | None = None  # upstream details a same-protocol client may want (Ollama durations)


def join(parts: list[EmbedResponse]) -> EmbedResponse:
    """Batch answers → one answer, vectors in the order the batches were sent."""
    tokens = [p.input_tokens for p in parts if p.input_tokens is not None]
    raw: dict[str, Any] = {}
    for p in parts:
        for key, value in (p.raw or {}).items():
            raw[key] = raw.get(key, 0) + value if isinstance(value, int) else value
    return EmbedResponse(
        [v for p in parts for v in p.vectors],
        parts[0].model if parts else "",
        sum(tokens) if tokens else None,
        raw or None,
    )


def floats(values: Any, where: str) -> list[float]:
    """An upstream's vector checked to be a list of finite numbers (ValueError otherwise)."""
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{where} is not a list of numbers")
    out = [float(v) for v in values]
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{where} holds a value that is not a finite number")
    return out
