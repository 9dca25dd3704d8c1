"""A JSON schema's string patterns, compiled by xgrammar's regex compiler instead of its JSON one.

xgrammar 0.2.9 gets `pattern` wrong inside JSON: as a lazy `Regex(..., json_string=true)` it
admits strings the pattern refuses (`^[0-9](?:x[0-9]+)?Z$` accepts "205Z"), and inlined it
writes a `"` or `\\` of the pattern raw, which ends or breaks the JSON string. Its plain regex
compiler (`Grammar.from_regex`) gets them right. So each pattern is swapped for a unique const
string before xgrammar sees the schema (`PatternMarkers.mark`), and in the printed grammar that
const's literal is swapped for the rules `from_regex` makes, adapted to a JSON string: literals
written JSON-escaped, classes without `"`, `\\` and control characters (so a pattern's strings
never hold those raw characters at all).
"""

import json
import secrets
from typing import Any

import xgrammar as xgr

from llm_worker.structured.ebnf_text import CharClass, literal_text, rewrite
from llm_worker.structured.errors import (
    InvalidSchemaError,
    UnsupportedSchemaFeatureError,
    xgrammar_message,
)

_RAW_IN_JSON = ((0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C))  # controls, '"', '\'


class PatternMarkers:
    """The patterns of one schema, each behind a const string no schema holds by chance."""

    def __init__(self) -> None:
        self._prefix = f"llmw-pattern-{secrets.token_hex(8)}-"
        self.patterns: list[str] = []

    def mark(self, node: dict[str, Any], where: str) -> None:
        """Replace the string pattern of `node` (in place) by a const marker for it."""
        pattern = node["pattern"]
        if not isinstance(pattern, str):
            raise InvalidSchemaError(f"'pattern' at {where} must be a string")
        if node.keys() & {"enum", "const"}:
            raise UnsupportedSchemaFeatureError(f"a pattern beside enum or const at {where}")
        types = node.get("type")
        names = [types] if isinstance(types, str) else list(types or [])
        if "string" not in names:
            if types is None:
                raise UnsupportedSchemaFeatureError(
                    f"a pattern at {where} without 'type': 'string'"
                )
            del node["pattern"]  # it only ever applies to strings, which the type excludes
            return
        marker = {"const": f"{self._prefix}{len(self.patterns)}"}
        self.patterns.append(pattern)
        others = [t for t in names if t != "string"]
        rest = {k: v for k, v in node.items() if k not in ("pattern", "type")}
        node.clear()
        node.update(marker if not others else {"anyOf": [marker, {**rest, "type": others}]})

    def inline(self, ebnf: str) -> str:
        """`ebnf` (the marked schema's grammar as xgrammar prints it) with each marker's
        literal replaced by its pattern's rules."""
        names = {json.dumps(f"{self._prefix}{i}"): f"json_pattern_{i}" for i in range(len(self))}
        rules = [_pattern_rules(p, f"json_pattern_{i}") for i, p in enumerate(self.patterns)]
        prefix_taken = any(line.startswith("json_pattern_") for line in ebnf.splitlines())
        assert not prefix_taken, "xgrammar named a rule json_pattern_*"

        def swap(text: str) -> str | None:
            name = names.get(text)
            return None if name is None else f'("\\"" {name} "\\"")'

        def refuse_lazy_regex(name: str) -> None:
            if name == "Regex":  # a pattern this class did not mark: not served exactly
                raise UnsupportedSchemaFeatureError("a string pattern in this position")

        body = rewrite(ebnf, on_literal=swap, on_name=refuse_lazy_regex)
        return "\n".join([body, *rules])

    def __len__(self) -> int:
        return len(self.patterns)


def _pattern_rules(pattern: str, name: str) -> str:
    try:
        grammar = xgr.Grammar.from_regex(pattern)
    except RuntimeError as exc:
        message = f"pattern {pattern!r}: {xgrammar_message(exc)}"
        if "not supported" in message.lower():
            raise UnsupportedSchemaFeatureError(message) from None
        raise InvalidSchemaError(message) from None

    def json_safe_class(char_class: CharClass) -> str | None:
        safe = char_class
        for low, high in _RAW_IN_JSON:
            safe = safe.without(low, high)
        if safe.is_empty:
            raise UnsupportedSchemaFeatureError(
                f"pattern {pattern!r} has a class of only '\"', '\\' or control characters, "
                "which a JSON string cannot hold raw"
            )
        return None if safe is char_class else safe.text()

    return rewrite(
        str(grammar),
        on_literal=lambda text: literal_text(json.dumps(text, ensure_ascii=False)[1:-1]),
        on_class=json_safe_class,
        on_name=lambda rule: name + rule.removeprefix("root") if rule.startswith("root") else None,
    )
