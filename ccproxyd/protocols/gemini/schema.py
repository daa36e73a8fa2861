"""JSON Schema ↔ the OpenAPI subset Gemini's ``parameters`` and ``responseSchema`` take.

Gemini rejects every keyword outside its Schema message (``$schema``,
``additionalProperties``, ``const``, ``$ref``...) with a 400, and refuses
``properties`` on anything but an object. Tool schemas from MCP servers and
coding agents use all of those, so they are rewritten here: references are
inlined, ``const`` becomes a one-value enum, nullable unions become
``nullable``, and whatever Gemini cannot express is dropped, while nested
properties, items, enums and required lists are kept.
"""

from __future__ import annotations

from typing import Any

import orjson

from .wire import camel

_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object", "null"})
_INT64_FIELDS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")
_MAX_DEPTH = 40  # recursive $refs are cut off here


def to_gemini(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema as a Gemini Schema; the input is not modified."""
    defs: dict[str, Any] = {}
    for key in ("definitions", "$defs"):
        if isinstance(schema.get(key), dict):
            defs.update(schema[key])
    return _clean(schema, defs, 0, frozenset())


def _clean(node: Any, defs: dict[str, Any], depth: int, expanding: frozenset[str]) -> dict[str, Any]:
    """Builds the output from Gemini's Schema fields only, so unknown keywords never pass through.
    (`default` is one: the current API ignores it, older deployments reject it.)"""
    if not isinstance(node, dict) or depth > _MAX_DEPTH:
        return {}
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        target = defs.get(name)
        if not isinstance(target, dict) or name in expanding:
            out: dict[str, Any] = {"type": "object"}  # unresolvable or recursive: an opaque object
        else:
            out = _clean(target, defs, depth + 1, expanding | {name})
        if isinstance(node.get("description"), str):
            out["description"] = node["description"]
        return out
    if isinstance(node.get("allOf"), list):
        return _clean(_merge_all_of(node), defs, depth + 1, expanding)

    out = {}
    kind = node.get("type")
    nullable = node.get("nullable") is True
    if isinstance(kind, list):
        kinds = [k for k in kind if isinstance(k, str) and k.lower() != "null"]
        nullable = nullable or len(kinds) < len(kind)
        kind = kinds[0] if len(kinds) == 1 else None
        if len(kinds) > 1:
            out["anyOf"] = [{"type": k} for k in kinds]
    if isinstance(kind, str) and kind.lower() in _TYPES:
        out["type"] = kind
    for key in ("format", "title", "description", "pattern", "minimum", "maximum"):
        if key in node and node[key] is not None:
            out[key] = node[key]
    for key in _INT64_FIELDS:
        if isinstance(node.get(key), (int, str)) and not isinstance(node.get(key), bool):
            out[key] = node[key]
    if "example" in node:
        out["example"] = node["example"]

    enum = _enum(node)
    if enum is not None:
        out["enum"], kind_of_values = enum
        out.setdefault("type", kind_of_values)

    variants = node.get("anyOf") if isinstance(node.get("anyOf"), list) else node.get("oneOf")
    if isinstance(variants, list):
        kept = []
        for v in variants:
            if isinstance(v, dict) and str(v.get("type", "")).lower() == "null" and len(v) == 1:
                nullable = True
            else:
                kept.append(_clean(v, defs, depth + 1, expanding))
        if len(kept) == 1 and "type" not in out:
            out.update({k: v for k, v in kept[0].items() if k not in out})
        elif kept:
            out["anyOf"] = kept

    props = node.get("properties")
    if isinstance(props, dict) or "required" in node:
        out.setdefault("type", "object")
    if str(out.get("type", "")).lower() == "object" and isinstance(props, dict) and props:
        out["properties"] = {name: _clean(sub, defs, depth + 1, expanding) for name, sub in props.items()}
        required = [r for r in _required(node) if r in props]
        if required:
            out["required"] = required
        ordering = node.get("propertyOrdering")
        if isinstance(ordering, list):
            out["propertyOrdering"] = [p for p in ordering if p in props]

    items = node.get("items")
    if isinstance(items, list):  # tuple validation: Gemini has one item schema
        items = items[0] if items else None
    if isinstance(items, dict):
        out["items"] = _clean(items, defs, depth + 1, expanding)
        out.setdefault("type", "array")

    if nullable:
        out["nullable"] = True
    return out


def _enum(node: dict[str, Any]) -> tuple[list[str], str] | None:
    """Gemini enum values are strings; numbers are written as strings (of an integer or number
    type), anything else is dropped. Returns the values and the type they imply."""
    values = node.get("enum")
    if "const" in node and values is None:
        values = [node["const"]]
    if not isinstance(values, list):
        return None
    values = [v for v in values if v is not None]
    if not values:
        return None
    if all(isinstance(v, str) for v in values):
        return values, "string"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        kind = "integer" if all(isinstance(v, int) for v in values) else "number"
        return [orjson.dumps(v).decode() for v in values], kind
    return None


def _merge_all_of(node: dict[str, Any]) -> dict[str, Any]:
    """allOf folded into one schema: properties and required lists joined, other keys first-wins."""
    merged: dict[str, Any] = {k: v for k, v in node.items() if k != "allOf"}
    props: dict[str, Any] = dict(merged.get("properties") or {})
    required: list[str] = _required(merged)
    for sub in node["allOf"]:
        if not isinstance(sub, dict):
            continue
        props.update(sub.get("properties") or {})
        required.extend(r for r in _required(sub) if r not in required)
        for key, value in sub.items():
            if key not in ("properties", "required"):
                merged.setdefault(key, value)
    if props:
        merged["properties"] = props
    if required:
        merged["required"] = required
    return merged


def has_properties(schema: dict[str, Any]) -> bool:
    return isinstance(schema.get("properties"), dict) and bool(schema["properties"])


# ---------------------------------------------------------------- Gemini → JSON Schema


def from_gemini(schema: Any) -> Any:
    """A Gemini Schema (upper-case types, ``nullable``, int64 strings) as plain JSON Schema for other protocols."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("propertyOrdering", "property_ordering") or (key == "format" and value == "enum"):
            continue
        if key == "type" and isinstance(value, str):
            if value.upper() != "TYPE_UNSPECIFIED":
                out["type"] = value.lower()
        elif key in ("properties",) and isinstance(value, dict):
            out["properties"] = {name: from_gemini(sub) for name, sub in value.items()}
        elif key == "items":
            out["items"] = from_gemini(value)
        elif key in ("anyOf", "any_of") and isinstance(value, list):
            out["anyOf"] = [from_gemini(v) for v in value]
        elif camel(key) in _INT64_FIELDS:
            out[camel(key)] = int(value) if isinstance(value, str) and value.isdigit() else value
        elif key != "nullable":
            out[key] = value
    if schema.get("nullable") is True:
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        elif "anyOf" in out:
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    return out



def _required(node: dict[str, Any]) -> list[str]:
    """A schema's ``required`` names; anything but a list of strings (``true``, a bare string) names none."""
    raw = node.get("required")
    return [r for r in raw if isinstance(r, str)] if isinstance(raw, list) else []
