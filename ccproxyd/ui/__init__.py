"""The status page's files: one HTML page, its script and style, and uPlot (MIT, vendored from npm, see uplot-LICENSE.txt).

No build step: the files in ``static/`` are served as they are.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

STATIC = Path(__file__).parent / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".txt": "text/plain; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}


@cache
def _files() -> dict[str, Path]:
    """The servable files by name, fixed at first use: a request names one of these or gets a 404, never a path."""
    return {p.name: p for p in STATIC.iterdir() if p.is_file() and p.suffix in _TYPES and p.name != "index.html"}


def page() -> bytes:
    return (STATIC / "index.html").read_bytes()


def asset(name: str) -> tuple[bytes, str] | None:
    path = _files().get(name)
    return None if path is None else (path.read_bytes(), _TYPES[path.suffix])
