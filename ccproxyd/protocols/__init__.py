"""The protocol adapters, by name. Adding a protocol means adding one module here."""

from __future__ import annotations

from .base import Adapter
from .claude import ADAPTER as CLAUDE
from .demo import ADAPTER as DEMO
from .gemini import ADAPTER as GEMINI
from .ollama import ADAPTER as OLLAMA
from .openai import ADAPTER as OPENAI
from .responses import ADAPTER as RESPONSES

ADAPTERS: dict[str, Adapter] = {a.name: a for a in (OPENAI, RESPONSES, CLAUDE, GEMINI, OLLAMA, DEMO)}

__all__ = ["ADAPTERS", "Adapter"]
