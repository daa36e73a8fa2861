"""Reasoning a client carries for an upstream of another protocol.

An upstream's reasoning often comes with something it needs back next turn: a
Claude signature, Gemini thought signatures, a Responses upstream's encrypted
blob, the field an OpenAI-compatible server put its thinking in. A client of
another protocol can only hand back its own protocol's opaque slot (a Claude
thinking ``signature``, a Responses reasoning item's ``encrypted_content``), so
the whole IR reasoning part travels there as base64 of ``ccpx1:`` + JSON (plain
base64, because Gemini's SDK decodes a ``thoughtSignature`` as such; it may
come back in the URL-safe alphabet or without padding), and comes back byte
for byte. Only ccproxyd reads it; no upstream ever sees it.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from .. import ir

MAGIC = b"ccpx1:"
PREFIX = base64.b64encode(MAGIC).decode()  # "Y2NweDE6": six bytes, so every wrapped value starts with it


def worth_carrying(part: ir.Reasoning, own: str | None = None) -> bool:
    """Whether the part holds anything an upstream needs back (text alone it does not) beyond
    what the ``own`` protocol's fields already carry."""
    others = {k for k in part.provider_metadata or {} if k != own}
    return bool(part.signature or part.redacted is not None or others)


def wrap(part: ir.Reasoning) -> str:
    data: dict[str, Any] = {"t": part.text}
    if part.signature:
        data["s"] = part.signature
    if part.redacted is not None:
        data["r"] = part.redacted
    if part.provider_metadata:
        data["m"] = part.provider_metadata
    return base64.b64encode(MAGIC + orjson.dumps(data)).decode()


def unwrap(value: str) -> ir.Reasoning | None:
    """A wrapped part back as it was; None for anything else (a real signature, say)."""
    if not value.startswith(PREFIX):
        return None
    try:
        raw = base64.b64decode(value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4))
        data = orjson.loads(raw[len(MAGIC):]) if raw.startswith(MAGIC) else None
    except (ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    meta = data.get("m")
    return ir.Reasoning(
        str(data.get("t") or ""),
        data.get("s") if isinstance(data.get("s"), str) else None,
        data.get("r") if isinstance(data.get("r"), str) else None,
        meta if isinstance(meta, dict) else None,
    )
