"""Type checks for client request bodies, shared by the adapters.

Each check raises ClientError naming the field by its path in the body
(``messages[2].content``), so the client knows what to fix.
"""

from __future__ import annotations

from typing import Any

from .. import ir
from ..errors import ClientError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array", dict: "an object"}


def _describe(kinds: tuple[type, ...]) -> str:
    if set(kinds) == {int, float}:
        return "a number"
    return " or ".join(_NAMES.get(k, k.__name__) for k in kinds)


def _exactly(value: Any, kinds: type | tuple[type, ...]) -> bool:
    """The usual case, decided without building anything: the value's own type is one of ``kinds``
    (which :func:`check` accepts too). Subclasses, and ints where floats are asked for, go the long way."""
    return type(value) is kinds or (type(kinds) is tuple and type(value) in kinds)


def check(value: Any, kinds: type | tuple[type, ...], path: str) -> Any:
    if _exactly(value, kinds):
        return value
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ClientError(f"{path} must be {_describe(kinds)}, got {type(value).__name__}", param=path)
    return value


def opt(body: dict[str, Any], key: str, kinds: type | tuple[type, ...], path: str = "") -> Any:
    """body[key] checked for type, or None when absent or null."""
    value = body.get(key)
    if value is None or _exactly(value, kinds):
        return value
    return check(value, kinds, f"{path}{key}")


def req(body: dict[str, Any], key: str, kinds: type | tuple[type, ...], path: str = "") -> Any:
    value = body.get(key)
    if value is None:
        raise ClientError(f"{path}{key} is required", param=f"{path}{key}")
    if _exactly(value, kinds):
        return value
    return check(value, kinds, f"{path}{key}")


def number(body: dict[str, Any], key: str, path: str = "") -> float | None:
    value = opt(body, key, (int, float), path)
    return float(value) if value is not None else None


def integer(body: dict[str, Any], key: str, path: str = "") -> int | None:
    value = opt(body, key, (int, float), path)
    if value is None:
        return None
    if isinstance(value, float) and not value.is_integer():
        raise ClientError(f"{path}{key} must be an integer", param=f"{path}{key}")
    if not INT64_MIN <= value <= INT64_MAX:  # no upstream takes it, and it cannot be encoded as JSON here
        raise ClientError(f"{path}{key} is out of range", param=f"{path}{key}")
    return int(value)


def string_list(body: dict[str, Any], key: str, path: str = "") -> list[str]:
    """A string or a list of strings (OpenAI ``stop``, Claude ``stop_sequences``)."""
    value = opt(body, key, (str, list), path)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    for i, item in enumerate(value):
        check(item, str, f"{path}{key}[{i}]")
    return list(value)


def split_data_url(url: str) -> tuple[str, str] | None:
    """``data:image/png;base64,AAA`` → (media type, base64 data)."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head[: -len(";base64")] or "application/octet-stream", data


def image_from_url(url: str, provider_metadata: dict[str, dict[str, Any]] | None = None) -> ir.Image:
    """An image given by URL, inline when the URL is a base64 data URL."""
    inline = split_data_url(url)
    if inline:
        return ir.Image(inline[0], inline[1], provider_metadata=provider_metadata)
    return ir.Image(url=url, provider_metadata=provider_metadata)
