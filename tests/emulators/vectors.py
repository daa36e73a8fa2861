"""Deterministic stand-in embeddings the emulators answer with, and a way for tests to predict them."""

from __future__ import annotations

import hashlib

DEFAULT_DIMS = 8


def vector_for(text: str, dims: int | None = None) -> list[float]:
    """A fixed vector per text: tests check that each input's vector came back in its place."""
    n = dims or DEFAULT_DIMS
    digest = b""
    counter = 0
    while len(digest) < n:
        digest += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    return [round((b - 127.5) / 127.5, 4) for b in digest[:n]]


def token_count(text: str) -> int:
    return max(1, len(text.split()))
