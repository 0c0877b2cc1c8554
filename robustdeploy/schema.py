"""The declared, versioned JSON Schemas of robustdeploy's documents (bundle manifest, run record, result, poison
set, latency benchmark), and a validator for the subset of JSON Schema 2020-12 they use: every document is checked
before any field is read, so a wrong type or an unknown key is one error line naming where it is, never a crash
further on."""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from pathlib import Path

from robustdeploy.errors import RobustDeployError

SCHEMAS = {"robustdeploy-bundle/1": "bundle-1.json", "robustdeploy-run/1": "run-1.json",
           "robustdeploy-result/2": "result-2.json", "robustdeploy-poison/1": "poison-1.json",
           "robustdeploy-bench/2": "bench-2.json"}
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


@functools.cache
def schema_file(name: str) -> dict:
    """A schema document shipped in `robustdeploy/schemas/`."""
    return json.loads(resources.files("robustdeploy").joinpath("schemas", name).read_text())


def _is(value: object, kind: str) -> bool:
    if kind == "integer":
        return type(value) is int
    if kind == "number":
        return type(value) in (int, float) and value == value and value not in (float("inf"), float("-inf"))
    return isinstance(value, _TYPES[kind])


def _resolve(ref: str, document: str) -> tuple[dict, str]:
    file, _, pointer = ref.partition("#")
    file = file or document
    node = schema_file(file)
    for part in filter(None, pointer.split("/")):
        node = node[part]
    return node, file


def problems(value: object, schema: dict, where: str = "", document: str = "") -> str | None:
    """The first way `value` breaks `schema`, as 'where: what' (None when it conforms)."""
    if "$ref" in schema:
        target, document = _resolve(schema["$ref"], document)
        return problems(value, target, where, document)
    at = where or "the document"
    if "const" in schema and value != schema["const"]:
        return f"{at} is {value!r}, expected {schema['const']!r}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{at} is {value!r}, expected one of {', '.join(map(repr, schema['enum']))}"
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, k) for k in kinds):
            return f"{at} is {json.dumps(value)[:40]}, expected {' or '.join(kinds)}"
    if _is(value, "number"):
        for key, fails in (("minimum", lambda b: value < b), ("maximum", lambda b: value > b),
                           ("exclusiveMinimum", lambda b: value <= b), ("exclusiveMaximum", lambda b: value >= b)):
            if key in schema and fails(schema[key]):
                return f"{at} is {value!r}, outside its range ({key} {schema[key]})"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return f"{at} is empty"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return f"{at} is {value[:40]!r}, not of the form {schema['pattern']}"
    if isinstance(value, list):
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        if len(value) < low or (high is not None and len(value) > high):
            expected = f"{low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
            return f"{at} has {len(value)} items, expected {expected}"
        for i, item in enumerate(value):
            if "items" in schema and (found := problems(item, schema["items"], f"{where}[{i}]", document)):
                return found
    if isinstance(value, dict):
        if len(value) < schema.get("minProperties", 0):
            return f"{at} is empty"
        for key in schema.get("required", []):
            if key not in value:
                return f"{at} lacks {key!r}"
        declared = schema.get("properties", {})
        for key, item in value.items():
            path = f"{where}.{key}" if where else key
            extra = schema.get("additionalProperties", True)
            sub = declared.get(key, extra if isinstance(extra, dict) else None)
            if sub is None and extra is False:
                return f"{path} is not a known key"
            if sub is not None and (found := problems(item, sub, path, document)):
                return found
    return None


def validate(data: object, path: Path, fix: str) -> dict:
    """`data` read from `path`, checked against the schema its `format` names; any problem is one line."""
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt not in SCHEMAS:
        raise RobustDeployError(f"{path} is not a robustdeploy document of a known format ({fmt!r}); {fix}")
    found = problems(data, schema_file(SCHEMAS[fmt]), document=SCHEMAS[fmt])
    if found:
        raise RobustDeployError(f"{path} does not follow {fmt}: {found}; {fix}")
    return data  # type: ignore[return-value]
