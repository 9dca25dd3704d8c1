"""The grammar-text rewriting the backend relies on: character classes as sets of code points,
literals that read back as written, and surrogates kept out of every class."""

import xgrammar as xgr
from hypothesis import given
from hypothesis import strategies as st

from llm_worker.structured.ebnf_text import CharClass, decode_literal_body, literal_text, rewrite
from llm_worker.structured.respell import SURROGATES, respelled

code_points = st.integers(0, 0x10FFFF)
ranges = st.tuples(code_points, code_points).map(lambda r: (min(r), max(r)))
classes = st.builds(CharClass, st.booleans(), st.lists(ranges, max_size=4).map(tuple))


def _admits(char_class: CharClass, code_point: int) -> bool:
    inside = any(lo <= code_point <= hi for lo, hi in char_class.ranges)
    return inside != char_class.negated


@given(classes, ranges, st.lists(code_points, max_size=30))
def test_without_removes_exactly_the_range(
    char_class: CharClass, removed: tuple[int, int], probes: list[int]
) -> None:
    low, high = removed
    result = char_class.without(low, high)
    edges = [low - 1, low, high, high + 1] + [c for r in char_class.ranges for c in r]
    for code_point in [p for p in probes + edges if 0 <= p <= 0x10FFFF]:
        expected = _admits(char_class, code_point) and not low <= code_point <= high
        assert _admits(result, code_point) == expected, code_point
    assert result.admits(low, high) is False
    assert char_class.admits(low, high) or result is char_class


@given(st.text())
def test_literals_read_back_as_written(text: str) -> None:
    assert decode_literal_body(literal_text(text)[1:-1]) == text


def test_rewrite_reaches_literals_classes_and_names_but_not_inside_literals() -> None:
    ebnf = 'root ::= (("[a]" rule_2 [^\\]x-z] "\\"" [\\U0000d7ff-\\U0000e000]))'
    seen: dict[str, list[object]] = {"literal": [], "class": [], "name": []}
    rewrite(
        ebnf,
        on_literal=seen["literal"].append,
        on_class=seen["class"].append,
        on_name=seen["name"].append,
    )
    assert seen["literal"] == ["[a]", '"']
    assert seen["name"] == ["root", "rule_2"]
    assert seen["class"] == [
        CharClass(True, ((ord("]"), ord("]")), (ord("x"), ord("z")))),
        CharClass(False, ((0xD7FF, 0xE000),)),
    ]
    assert rewrite(ebnf) == ebnf


def test_respelled_grammars_read_back_as_printed() -> None:
    """xgrammar prints U+001F then "0" as \\x1f0, which it reads back as U+01F0."""
    printed = str(xgr.Grammar.from_ebnf('root ::= "\\u001f0" [\\u001f0]'))
    assert '"\\x1f0"' in printed
    found: list[str] = []
    rewrite(str(xgr.Grammar.from_ebnf(respelled(printed))), on_literal=found.append)
    assert found == ["\x1f0"]


def test_no_class_the_backend_compiles_admits_a_surrogate() -> None:
    low, high = SURROGATES
    for grammar in (
        xgr.Grammar.from_regex(".+[^a]"),
        xgr.Grammar.builtin_json_grammar(),
        xgr.Grammar.from_ebnf('root ::= [\\u0000-\\U0010ffff] [^"]'),
    ):
        fixed = respelled(str(grammar))
        found: list[CharClass] = []
        rewrite(fixed, on_class=found.append)
        assert found and not any(c.admits(low, high) for c in found)
        xgr.Grammar.from_ebnf(fixed)  # still a grammar xgrammar reads
