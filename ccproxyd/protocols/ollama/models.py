"""``/api/tags``, ``/api/show`` and ``/api/version`` for Ollama clients.

Editors pick what to offer from these: ``capabilities`` decides whether tools,
images and thinking are used, and ``model_info["<architecture>.context_length"]``
sizes the prompt. The proxy knows neither files nor digests, so those are
stable stand-ins derived from the model name.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from ..base import ModelInfo

# Reported by /api/version (server.ollama_version overrides it): clients refuse servers they find too old
# (Codex CLI --oss needs 0.13.4 or later).
VERSION = "0.13.5"
ARCHITECTURE = "ccproxyd"
CONTEXT_LENGTH = 131072  # upstream windows are unknown here; most current chat models take this
MODIFIED_AT = "2025-01-01T00:00:00Z"
EXPIRES_AT = "2099-01-01T00:00:00Z"


def encode_model_list(models: list[ModelInfo]) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": m.id,
                "model": m.id,
                "modified_at": MODIFIED_AT,
                "size": 0,
                "digest": _digest(m.id),
                "details": _details(m),
            }
            for m in models
        ]
    }


def capabilities(model: ModelInfo) -> list[str]:
    """What Ollama clients decide features from: an embedding model only embeds."""
    if model.capabilities is not None:
        return list(model.capabilities)
    if model.kind == "embedding":
        return ["embedding"]
    found = ["completion"]
    if model.tools:
        found.append("tools")
    if model.vision:
        found.append("vision")
    found.append("thinking")
    return found


def encode_model_info(model: ModelInfo) -> dict[str, Any]:
    return {
        "modelfile": f"# served by ccproxyd\nFROM {model.id}\n",
        "parameters": "",
        "template": "{{ .Prompt }}",
        "details": _details(model),
        "model_info": {
            "general.architecture": ARCHITECTURE,
            "general.basename": model.id,
            f"{ARCHITECTURE}.context_length": CONTEXT_LENGTH,
        },
        "capabilities": capabilities(model),
        "modified_at": MODIFIED_AT,
    }


def encode_version(version: str | None = None) -> dict[str, Any]:
    return {"version": version or VERSION}


def encode_running_list(models: list[ModelInfo]) -> dict[str, Any]:
    """``/api/ps``: every model "loaded", for as long as ccproxyd runs."""
    return {
        "models": [
            {
                "name": m.id,
                "model": m.id,
                "size": 0,
                "digest": _digest(m.id),
                "details": _details(m),
                "expires_at": EXPIRES_AT,
                "size_vram": 0,
                "context_length": CONTEXT_LENGTH,
            }
            for m in models
        ]
    }


def pull_lines(stream: bool) -> list[dict[str, Any]]:
    """What Ollama answers a pull of a model it already has, ending in ``{"status": "success"}``."""
    if not stream:
        return [{"status": "success"}]
    return [{"status": "pulling manifest"}, {"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]


def decode_model_list(body: bytes) -> list[ModelInfo]:
    """An upstream's ``/api/tags``: names only; capabilities come from its ``/api/show``."""
    found = []
    for m in orjson.loads(body).get("models") or ():
        name = m.get("model") or m.get("name") if isinstance(m, dict) else None
        if isinstance(name, str) and name:
            family = (m.get("details") or {}).get("family") if isinstance(m.get("details"), dict) else None
            found.append(ModelInfo(name, owned_by=family if isinstance(family, str) and family else "ollama"))
    return found


def decode_capabilities(body: bytes) -> tuple[str, ...] | None:
    capabilities = orjson.loads(body).get("capabilities")
    if isinstance(capabilities, list) and all(isinstance(c, str) for c in capabilities):
        return tuple(capabilities)
    return None


def model_from_body(body: dict[str, Any]) -> str | None:
    """``/api/show`` names the model in ``model``; older clients send ``name``."""
    for key in ("model", "name"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _details(model: ModelInfo) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": model.owned_by,
        "families": [model.owned_by],
        "parameter_size": "",
        "quantization_level": "",
    }


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()
