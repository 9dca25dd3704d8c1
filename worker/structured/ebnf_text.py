"""Rewriting grammar text as xgrammar prints it: string literals, character classes, rule names.

xgrammar's printer writes literals in double quotes and classes in brackets, both with
backslash escapes (`\\n`, `\\"`, `\\]`, `\\xHH`, `\\uHHHH`, `\\UHHHHHHHH`, ...); everything else
is rule names, operators and repetition counts. `rewrite` walks those pieces and lets a
caller replace each.
"""

from collections.abc import Callable
from dataclasses import dataclass

from llm_worker.structured.errors import InvalidGrammarError

_NAMED_ESCAPES = {
    "n": "\n", "r": "\r", "t": "\t", "f": "\f", "v": "\v", "0": "\0", "b": "\b", "a": "\a",
    "e": "\x1b",
}  # fmt: skip
_HEX_WIDTHS = {"x": 2, "u": 4, "U": 8}
_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME_CHARS = _NAME_START | frozenset("0123456789")

CodeRange = tuple[int, int]  # first and last code point, inclusive


@dataclass(frozen=True)
class CharClass:
    negated: bool
    ranges: tuple[CodeRange, ...]

    def admits(self, low: int, high: int) -> bool:
        """Whether it admits any code point in low..high."""
        overlaps = any(lo <= high and low <= hi for lo, hi in self.ranges)
        covers = any(lo <= low and high <= hi for lo, hi in self.ranges)
        return not covers if self.negated else overlaps

    def without(self, low: int, high: int) -> "CharClass":
        """The class less the code points low..high (it may then admit nothing)."""
        if not self.admits(low, high):
            return self
        if self.negated:
            return CharClass(True, (*self.ranges, (low, high)))
        kept: list[CodeRange] = []
        for lo, hi in self.ranges:
            if lo < low:
                kept.append((lo, min(hi, low - 1)))
            if hi > high:
                kept.append((max(lo, high + 1), hi))
        return CharClass(False, tuple(kept))

    @property
    def is_empty(self) -> bool:
        return not self.negated and not self.ranges

    def text(self) -> str:
        body = "".join(
            f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in self.ranges
        )
        return f"[{'^' if self.negated else ''}{body}]"


def literal_text(value: str) -> str:
    """`value` as an EBNF string literal."""
    body = "".join(c if c.isprintable() and c not in '"\\' else f"\\U{ord(c):08x}" for c in value)
    return f'"{body}"'


def decode_literal_body(body: str) -> str:
    """The text of a literal whose quotes are already removed."""
    chars, i = [], 0
    while i < len(body):
        code_point, i = _code_point(body, i)
        chars.append(chr(code_point))
    return "".join(chars)


def rewrite(
    ebnf: str,
    *,
    on_literal: Callable[[str], str | None] = lambda _: None,
    on_class: Callable[[CharClass], str | None] = lambda _: None,
    on_name: Callable[[str], str | None] = lambda _: None,
) -> str:
    """`ebnf` with each literal (given its text), class and rule name replaced by what the
    callback returns; None keeps the original."""
    out: list[str] = []
    i = 0
    while i < len(ebnf):
        char = ebnf[i]
        if char == '"':
            end = _end_of_literal(ebnf, i)
            new = on_literal(decode_literal_body(ebnf[i + 1 : end - 1]))
        elif char == "[":
            end, char_class = _parse_class(ebnf, i)
            new = on_class(char_class)
        elif char in _NAME_START:
            end = i + 1
            while end < len(ebnf) and ebnf[end] in _NAME_CHARS:
                end += 1
            new = on_name(ebnf[i:end])
        else:
            end, new = i + 1, None
        out.append(ebnf[i:end] if new is None else new)
        i = end
    return "".join(out)


def _end_of_literal(text: str, start: int) -> int:
    i = start + 1
    while i < len(text) and text[i] != '"':
        i += 2 if text[i] == "\\" else 1
    if i >= len(text):
        raise InvalidGrammarError(f"a string literal at offset {start} is not closed")
    return i + 1


def _parse_class(text: str, start: int) -> tuple[int, CharClass]:
    i = start + 1
    negated = text.startswith("^", i)
    i += int(negated)
    ranges: list[CodeRange] = []
    while i < len(text) and text[i] != "]":
        low, i = _code_point(text, i)
        high = low
        if text.startswith("-", i) and not text.startswith("-]", i):
            high, i = _code_point(text, i + 1)
        ranges.append((low, high))
    if i >= len(text):
        raise InvalidGrammarError(f"a character class at offset {start} is not closed")
    return i + 1, CharClass(negated, tuple(ranges))


def _code_point(text: str, i: int) -> tuple[int, int]:
    """The code point written at text[i] (maybe an escape) and the index after it."""
    if text[i] != "\\":
        return ord(text[i]), i + 1
    escape = text[i + 1]
    width = _HEX_WIDTHS.get(escape)
    if width is not None:
        return int(text[i + 2 : i + 2 + width], 16), i + 2 + width
    return ord(_NAMED_ESCAPES.get(escape, escape)), i + 2
