"""Which JSON schemas the grammar backend can serve exactly, and the copy it compiles.

xgrammar 0.2.9 compiles some keywords without enforcing them (it accepts `[1, 1]` under
`uniqueItems`, anything under `not`, a number that is not a `multipleOf` 0.5, `[]` under
`contains`, and a remote `$ref` as any value), and key patterns (`patternProperties`,
`propertyNames`) go through its JSON regex path, which admits strings a pattern refuses (see
json_patterns.py). Serving such a schema would break the promise that every output validates,
so those keywords are refused here with where they are; `oneOf` is served only where its
branches cannot overlap (then it means `anyOf`), and `allOf` only with one branch.
Formats xgrammar checks loosely are rewritten to exact patterns (format_patterns.py), and a
pattern beside minLength/maxLength is refused (xgrammar keeps the pattern, drops the bounds).
"""

import copy
import json
from collections.abc import Iterator
from typing import Any

from llm_worker.structured.errors import InvalidSchemaError, UnsupportedSchemaFeatureError
from llm_worker.structured.format_patterns import EXACT_FORMAT_PATTERNS, UNENFORCED_FORMATS
from llm_worker.structured.json_patterns import PatternMarkers

MAX_SCHEMA_DEPTH = 48  # nested subschemas; deeper ones are refused before they reach C++

_UNENFORCED_KEYWORDS = frozenset(
    {
        "not", "if", "then", "else", "contains", "minContains", "maxContains",
        "dependentRequired", "dependentSchemas", "dependencies", "additionalItems",
        "$dynamicRef", "$recursiveRef", "patternProperties", "propertyNames",
    }
)  # fmt: skip
_TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties", "unevaluatedProperties", "unevaluatedItems")


def checked_schema(schema: dict[str, Any], markers: PatternMarkers) -> dict[str, Any]:
    """A copy of `schema` to compile, its string patterns behind `markers`; raises
    UnsupportedSchemaFeatureError (or InvalidSchemaError) naming the keyword and where it is."""
    served = copy.deepcopy(schema)
    _Walk(served, markers).check(served, "#", 0)
    return served


class _Walk:
    def __init__(self, root: dict[str, Any], markers: PatternMarkers) -> None:
        self.root = root
        self.markers = markers

    def check(self, node: Any, where: str, depth: int) -> None:
        if isinstance(node, bool):
            return
        _check_node(node, self.root, where, depth)
        if "pattern" in node:
            self.markers.mark(node, where)
        for child_where, child in _subschemas(node, where):
            self.check(child, child_where, depth + 1)


def _check_node(node: Any, root: dict[str, Any], where: str, depth: int) -> None:
    if not isinstance(node, dict):
        raise InvalidSchemaError(f"{where} must be an object or a boolean, got {_kind(node)}")
    if depth > MAX_SCHEMA_DEPTH:
        raise UnsupportedSchemaFeatureError(f"{where} is nested over {MAX_SCHEMA_DEPTH} deep")
    for keyword in sorted(node.keys() & _UNENFORCED_KEYWORDS):
        raise UnsupportedSchemaFeatureError(f"'{keyword}' at {where}")
    _check_type(node, where)
    if node.get("uniqueItems") is True:
        raise UnsupportedSchemaFeatureError(f"'uniqueItems' at {where}")
    _check_multiple_of(node, where)
    _check_ref(node, where)
    _rewrite_format(node, where)
    if "pattern" in node and node.keys() & {"minLength", "maxLength"}:
        raise UnsupportedSchemaFeatureError(  # xgrammar drops the bounds beside a pattern
            f"a pattern (or a date/time/ipv4 format) with minLength/maxLength at {where}; "
            "put the length in the pattern"
        )
    if len(node.get("allOf", ())) > 1:
        raise UnsupportedSchemaFeatureError(
            f"'allOf' with more than one schema at {where}; merge them into one"
        )
    if "oneOf" in node and not _branches_exclusive(node["oneOf"], root):
        raise UnsupportedSchemaFeatureError(
            f"'oneOf' at {where} whose branches may overlap; use anyOf, or give each branch "
            "a required property with its own const (a discriminator)"
        )


def _subschemas(node: dict[str, Any], where: str) -> Iterator[tuple[str, Any]]:
    for key in _SCHEMA_MAPS:
        value = node.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise InvalidSchemaError(f"'{key}' at {where} must be an object, got {_kind(value)}")
        for name, child in value.items():
            yield f"{where}/{key}/{_escape(name)}", child
    for key in _SCHEMA_LISTS:
        value = node.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not value:
            raise InvalidSchemaError(f"'{key}' at {where} must be a non-empty list of schemas")
        for i, child in enumerate(value):
            yield f"{where}/{key}/{i}", child
    for key in _SCHEMA_VALUES:
        if key in node:
            yield f"{where}/{key}", node[key]


def _check_type(node: dict[str, Any], where: str) -> None:
    types = node.get("type")
    if types is None:
        return
    names = [types] if isinstance(types, str) else types
    if (
        not isinstance(names, list)
        or not names
        or any(not isinstance(t, str) or t not in _TYPES for t in names)
    ):
        raise InvalidSchemaError(
            f"'type' at {where} must name one or more of {', '.join(sorted(_TYPES))}; got {types!r}"
        )


def _check_multiple_of(node: dict[str, Any], where: str) -> None:
    if "multipleOf" not in node:
        return
    step = node["multipleOf"]
    if node.get("type") != "integer" or not isinstance(step, int) or step <= 0:
        raise UnsupportedSchemaFeatureError(
            f"'multipleOf' at {where}: only a positive integer step on an integer type"
        )


def _check_ref(node: dict[str, Any], where: str) -> None:
    ref = node.get("$ref")
    if ref is None:
        return
    if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
        raise UnsupportedSchemaFeatureError(
            f"'$ref' {ref!r} at {where}: only references inside the schema (#/...)"
        )


def _rewrite_format(node: dict[str, Any], where: str) -> None:
    fmt = node.get("format")
    if fmt in UNENFORCED_FORMATS:
        raise UnsupportedSchemaFeatureError(f"format '{fmt}' at {where}")
    if fmt not in EXACT_FORMAT_PATTERNS:
        return
    if "pattern" in node:
        raise UnsupportedSchemaFeatureError(f"format '{fmt}' together with a pattern at {where}")
    node["pattern"] = EXACT_FORMAT_PATTERNS[fmt]
    del node["format"]


def _branches_exclusive(branches: Any, root: dict[str, Any]) -> bool:
    """Whether no value can match two of `branches`: their types are disjoint, or each is an
    object that requires one same property with a const (or enum) of its own."""
    if not isinstance(branches, list):
        return False  # reported as an invalid oneOf by _subschemas
    resolved = [_resolve(b, root) for b in branches]
    if any(not isinstance(b, dict) for b in resolved):
        return False
    return _types_disjoint(resolved) or _discriminated(resolved)


def _types_disjoint(branches: list[dict[str, Any]]) -> bool:
    seen: set[str] = set()
    for branch in branches:
        types = branch.get("type")
        names = {types} if isinstance(types, str) else set(types or ())
        if not names:
            return False  # an untyped branch may match anything
        if "number" in names:
            names.add("integer")  # every integer is a number
        if names & seen:
            return False
        seen |= names
    return True


def _discriminated(branches: list[dict[str, Any]]) -> bool:
    candidates = set.intersection(*(set(b.get("required", ())) for b in branches))
    for name in candidates:
        values: list[Any] = []
        for branch in branches:
            tag = branch.get("properties", {}).get(name)
            if not isinstance(tag, dict) or not ("const" in tag or "enum" in tag):
                break
            values.extend([tag["const"]] if "const" in tag else tag["enum"])
        else:
            keys = [json.dumps(_json_number(v), sort_keys=True) for v in values]
            if len(set(keys)) == len(keys):
                return True
    return False


def _json_number(value: Any) -> Any:
    """1.0 and 1 are one JSON value."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _resolve(node: Any, root: dict[str, Any]) -> Any:
    """Follow a local $ref (one hop at a time) to the schema it names; None if it names none."""
    for _ in range(MAX_SCHEMA_DEPTH):
        if not isinstance(node, dict) or not isinstance(node.get("$ref"), str):
            return node
        target: Any = root
        for part in node["$ref"].removeprefix("#").split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, dict) else None
        node = target
    return None


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def _kind(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )
