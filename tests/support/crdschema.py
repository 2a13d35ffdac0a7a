"""Walking a CRD's OpenAPI schema: every (path, schema) pair, and the bounds every field must have."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def walk(schema: dict[str, Any], path: str = "spec") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every sub-schema with its path (``spec.a.b``, ``[]`` for items, ``{}`` for map values)."""
    yield path, schema
    for name, child in (schema.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def undocumented_and_unbounded(spec: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The fields without a description, and those without bounds (a number's range, a string's length...)."""
    undocumented, unbounded = [], []
    for path, schema in walk(spec):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            continue
        if "description" not in schema and not path.endswith(("[]", "{}")):
            undocumented.append(path)
        kind = schema.get("type") or ("int-or-string" if schema.get("x-kubernetes-int-or-string") else None)
        bounded = {
            "integer": "minimum" in schema and "maximum" in schema,
            "number": "minimum" in schema and "maximum" in schema,
            "string": "maxLength" in schema or "enum" in schema,
            "int-or-string": "maxLength" in schema and "pattern" in schema,
            "array": "maxItems" in schema,
            "object": "properties" in schema or "maxProperties" in schema,
            "boolean": True,
        }.get(kind, False)
        if not bounded:
            unbounded.append(path)
    return undocumented, unbounded
