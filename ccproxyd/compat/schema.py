"""JSON Schema in both directions of compat mode.

Going up, a tool's parameter schema is described in prose lines the model can
read (types, required/optional, enums, nested objects and arrays). Coming back,
the values the model wrote are coerced to the declared types, because models
often quote numbers and booleans (``"3"`` for an integer parameter).
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

MAX_DEPTH = 8  # nesting followed before giving up (recursive $refs end here)
_INTEGER = re.compile(r"^[+-]?\d+$")
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_CONSTRAINTS = (
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
)


def resolve(schema: Any, root: dict[str, Any]) -> dict[str, Any]:
    """The schema itself, or what its local ``$ref`` points to; ``{}`` for anything unusable."""
    for _ in range(MAX_DEPTH):
        if not isinstance(schema, dict):
            return {}
        ref = schema.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return schema
        target: Any = root
        for key in ref[2:].split("/"):
            target = target.get(key.replace("~1", "/").replace("~0", "~")) if isinstance(target, dict) else None
        schema = target
    return {}


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


# ---------------------------------------------------------------- describing


def describe_parameters(schema: dict[str, Any]) -> list[str]:
    """One bullet line per parameter, nested ones indented under their parent."""
    lines: list[str] = []
    _describe_properties(resolve(schema, schema), schema, 0, lines)
    return lines


def _describe_properties(obj: dict[str, Any], root: dict[str, Any], depth: int, lines: list[str]) -> None:
    properties = obj.get("properties")
    if not isinstance(properties, dict) or depth >= MAX_DEPTH:
        return
    required = obj.get("required") if isinstance(obj.get("required"), list) else []
    for name, raw in properties.items():
        sub = resolve(raw, root)
        flags = [label(sub, root), "required" if name in required else "optional", *_constraints(sub)]
        _bullet(lines, depth, f"{name} ({', '.join(flags)})", sub.get("description"))
        _describe_children(sub, root, depth + 1, lines)


def _describe_children(schema: dict[str, Any], root: dict[str, Any], depth: int, lines: list[str]) -> None:
    """The structure below one parameter: object fields, array items, alternatives, map values."""
    if depth >= MAX_DEPTH:
        return
    if isinstance(schema.get("properties"), dict):
        _describe_properties(schema, root, depth, lines)
    items = resolve(schema.get("items"), root)
    if items and _has_structure(items, root):
        _bullet(lines, depth, f"each item ({label(items, root)}{''.join(', ' + c for c in _constraints(items))})", items.get("description"))
        _describe_children(items, root, depth + 1, lines)
    variants = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(variants, list):
        for n, raw in enumerate(variants, 1):
            variant = resolve(raw, root)
            if _has_structure(variant, root):
                _bullet(lines, depth, f"option {n} ({label(variant, root)})", variant.get("description"))
                _describe_children(variant, root, depth + 1, lines)
    extra = resolve(schema.get("additionalProperties"), root)
    if extra and _has_structure(extra, root):
        _bullet(lines, depth, f"each value ({label(extra, root)})", extra.get("description"))
        _describe_children(extra, root, depth + 1, lines)


def _has_structure(schema: dict[str, Any], root: dict[str, Any]) -> bool:
    if isinstance(schema.get("properties"), dict) or isinstance(schema.get("anyOf") or schema.get("oneOf"), list):
        return True
    items = resolve(schema.get("items"), root)
    return bool(items) and _has_structure(items, root)


def _bullet(lines: list[str], depth: int, head: str, description: Any) -> None:
    indent = "  " * depth
    line = f"{indent}- {head}"
    if isinstance(description, str) and description.strip():
        line += ": " + description.strip().replace("\n", "\n" + indent + "  ")
    lines.append(line)


def label(schema: dict[str, Any], root: dict[str, Any], depth: int = 0) -> str:
    """A short type name: ``string``, ``integer or null``, ``array of object``."""
    if depth >= MAX_DEPTH:
        return "any"
    if "const" in schema:
        return "constant " + _json(schema["const"])
    declared = schema.get("type")
    if isinstance(declared, list):
        return " or ".join(_array_label(schema, root, depth) if t == "array" else str(t) for t in declared) or "any"
    if declared == "array":
        return _array_label(schema, root, depth)
    if isinstance(declared, str):
        return declared
    variants = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(variants, list) and variants:
        return " or ".join(_variant_label(resolve(v, root), root, depth + 1) for v in variants)
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return " or ".join(dict.fromkeys(_type_of(v) for v in schema["enum"]))
    if "properties" in schema:
        return "object"
    return "any"


def _variant_label(schema: dict[str, Any], root: dict[str, Any], depth: int) -> str:
    """An anyOf alternative or array item type, with its own enum or limits in brackets."""
    constraints = _constraints(schema)
    return label(schema, root, depth) + (f" [{'; '.join(constraints)}]" if constraints else "")


def _array_label(schema: dict[str, Any], root: dict[str, Any], depth: int) -> str:
    items = resolve(schema.get("items"), root)
    return f"array of {_variant_label(items, root, depth + 1)}" if items else "array"


def _constraints(schema: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if isinstance(schema.get("enum"), list):
        out.append("one of: " + ", ".join(_json(v) for v in schema["enum"]))
    if "default" in schema:
        out.append("default: " + _json(schema["default"]))
    out.extend(f"{key}: {_json(schema[key])}" for key in _CONSTRAINTS if key in schema)
    return out


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


# ---------------------------------------------------------------- coercing

_FAIL = object()


def coerce(value: Any, schema: Any, root: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """``value`` converted to the type ``schema`` declares where the model wrote another.

    Values that already fit, and values that cannot be converted, come back
    unchanged: the client validates, we only undo the model's quoting habits.
    """
    root = root if root is not None else (schema if isinstance(schema, dict) else {})
    schema = resolve(schema, root)
    if not schema or depth >= MAX_DEPTH:
        return value
    declared = schema.get("type")
    types = [declared] if isinstance(declared, str) else [t for t in declared or () if isinstance(t, str)]
    if not types:
        variants = schema.get("anyOf") or schema.get("oneOf")
        if not isinstance(variants, list):
            return value
        options = [resolve(v, root) for v in variants]
        for option in options:
            if _fits(value, option):
                return coerce(value, option, root, depth + 1)
        for option in options:
            converted = coerce(value, option, root, depth + 1)
            if _fits(converted, option):
                return converted
        return value
    for t in types:
        if _is(value, t):
            return _coerce_inside(value, t, schema, root, depth)
    for t in types:
        converted = _convert(value, t)
        if converted is not _FAIL:
            return _coerce_inside(converted, t, schema, root, depth)
    return value


def _fits(value: Any, schema: dict[str, Any]) -> bool:
    declared = schema.get("type")
    types = [declared] if isinstance(declared, str) else declared if isinstance(declared, list) else []
    return any(_is(value, t) for t in types)


def _is(value: Any, json_type: str) -> bool:
    if json_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if json_type == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if json_type == "string":
        return isinstance(value, str)
    if json_type == "boolean":
        return isinstance(value, bool)
    if json_type == "null":
        return value is None
    if json_type == "array":
        return isinstance(value, list)
    if json_type == "object":
        return isinstance(value, dict)
    return False


def _convert(value: Any, json_type: str) -> Any:
    """One value as ``json_type``, or ``_FAIL``."""
    if json_type == "string":
        return _json(value) if value is not None else _FAIL
    if isinstance(value, float) and json_type == "integer":
        return int(value) if value.is_integer() else _FAIL
    if not isinstance(value, str):
        return _FAIL
    text = value.strip()
    if json_type == "integer":
        return int(text) if _INTEGER.match(text) else _FAIL
    if json_type == "number":
        if _INTEGER.match(text):
            return int(text)
        return float(text) if _NUMBER.match(text) and math.isfinite(float(text)) else _FAIL
    if json_type == "boolean":
        return {"true": True, "false": False}.get(text.lower(), _FAIL)
    if json_type == "null":
        return None if text in ("null", "") else _FAIL
    if json_type in ("array", "object"):
        try:
            loaded = orjson.loads(text)
        except orjson.JSONDecodeError:
            return _FAIL
        return loaded if _is(loaded, json_type) else _FAIL
    return _FAIL


def _coerce_inside(value: Any, json_type: str, schema: dict[str, Any], root: dict[str, Any], depth: int) -> Any:
    if json_type == "array" and isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [coerce(item, schema["items"], root, depth + 1) for item in value]
    if json_type == "object" and isinstance(value, dict):
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        extra = schema.get("additionalProperties")
        return {
            k: coerce(v, properties[k], root, depth + 1)
            if k in properties
            else coerce(v, extra, root, depth + 1)
            if isinstance(extra, dict)
            else v
            for k, v in value.items()
        }
    return value
