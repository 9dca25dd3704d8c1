"""The exact patterns that replace formats xgrammar checks loosely, against Python's parsers,
and in the grammar itself."""

import datetime
import ipaddress
import re

import pytest
import xgrammar as xgr
from hypothesis import given
from hypothesis import strategies as st

from llm_worker.schemas.structured import StructuredOutputs
from llm_worker.structured.compiler import GrammarCompiler
from llm_worker.structured.format_patterns import EXACT_FORMAT_PATTERNS

DATE = re.compile(EXACT_FORMAT_PATTERNS["date"])
DATE_TIME = re.compile(EXACT_FORMAT_PATTERNS["date-time"])
IPV4 = re.compile(EXACT_FORMAT_PATTERNS["ipv4"])


def _is_date(text: str) -> bool:
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def test_the_date_pattern_is_the_calendar() -> None:
    """Every day of every month of years that test each leap rule (and year 0, which Python
    refuses), including the days that do not exist."""
    for year in (0, 1, 4, 100, 400, 1900, 1999, 2000, 2023, 2024, 2100, 9996, 9999):
        for month in range(0, 14):
            for day in range(0, 33):
                text = f"{year:04d}-{month:02d}-{day:02d}"
                assert bool(DATE.fullmatch(text)) == _is_date(text), text


@given(st.from_regex(DATE_TIME, fullmatch=True))
def test_every_date_time_the_pattern_admits_parses(text: str) -> None:
    parsed = datetime.datetime.fromisoformat(text)
    assert parsed.tzinfo is not None


@given(st.lists(st.integers(0, 300), min_size=4, max_size=4), st.sampled_from(["", "0", "00"]))
def test_the_ipv4_pattern_is_pythons_ipv4(octets: list[int], padding: str) -> None:
    text = ".".join(padding + str(o) if i == 2 else str(o) for i, o in enumerate(octets))
    try:
        ipaddress.IPv4Address(text)
        valid = True
    except ValueError:
        valid = False
    assert bool(IPV4.fullmatch(text)) == valid, text


@pytest.mark.parametrize(
    ("fmt", "valid", "invalid"),
    [
        ("date", ["2024-02-29", "2000-02-29", "0001-01-01"], ["2023-02-29", "1900-02-29",
                                                              "2024-04-31", "0000-01-01"]),
        ("ipv4", ["192.168.0.1", "0.0.0.0"], ["01.2.3.4", "256.1.1.1", "1.2.3"]),
        ("time", ["23:59:59Z", "00:00:00.5+05:30"], ["24:00:00Z", "23:59:60Z", "12:00:00"]),
        ("date-time", ["2024-02-29T12:00:00-01:00"], ["2023-02-29T12:00:00Z",
                                                      "2024-01-01 12:00:00Z"]),
    ],
)  # fmt: skip
def test_the_grammar_holds_the_format_exactly(
    fmt: str, valid: list[str], invalid: list[str], compiler: GrammarCompiler
) -> None:
    schema = {"type": "string", "format": fmt}
    grammar = compiler.compile_now(StructuredOutputs.model_validate({"json": schema}))
    for text, expected in [(v, True) for v in valid] + [(i, False) for i in invalid]:
        matcher = xgr.GrammarMatcher(grammar)
        whole = matcher.accept_string(f'"{text}"') and matcher.is_completed()
        assert whole == expected, text
