"""Hypothesis strategies for hostile messages: arbitrary bytes, arbitrary JSON, and job-shaped
JSON with extreme numbers and text no tokenizer or hash can take."""

import json
from typing import Any

from hypothesis import strategies as st

JSON_LEAVES = (st.none() | st.booleans() | st.integers()
               | st.floats(allow_nan=False, allow_infinity=False) | st.text())
JSON = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=40)

EXTREME_INTS = st.integers() | st.sampled_from([-1, 0, 2**31, 2**63, 2**64, -(2**63) - 1])
EXTREME_NUMBERS = EXTREME_INTS | st.floats() | st.booleans()
HOSTILE_TEXT = st.text() | st.sampled_from(["\ud800", "a\udfffz", "", "\x00", "𝄞" * 50])
SAMPLING = st.fixed_dictionaries({}, optional={
    name: EXTREME_NUMBERS for name in (
        "temperature", "top_p", "top_k", "min_p", "seed", "max_tokens", "min_tokens",
        "repetition_penalty", "logprobs")
} | {"stop": st.lists(HOSTILE_TEXT, max_size=3),
     "stop_token_ids": st.lists(EXTREME_INTS, max_size=3)})
JOB_SHAPED = st.fixed_dictionaries({"id": st.sampled_from(["j-1", "", "has space", "\ud800"])},
                                   optional={
    "prompt": HOSTILE_TEXT, "prompt_token_ids": st.lists(EXTREME_NUMBERS, max_size=3),
    "sampling": SAMPLING, "cache_salt": HOSTILE_TEXT, "priority": EXTREME_NUMBERS,
    "deadline": EXTREME_NUMBERS | st.text(max_size=30),
    "metadata": st.dictionaries(HOSTILE_TEXT, HOSTILE_TEXT, max_size=2),
})


def job_shaped_bytes(fields: dict[str, Any]) -> bytes:
    """JSON as a hostile producer writes it: NaN allowed, lone surrogates as escapes."""
    return json.dumps(fields, allow_nan=True).encode("utf-8", "surrogatepass")


MESSAGES = (st.binary(max_size=512)
            | JSON.map(lambda value: json.dumps(value).encode())
            | JOB_SHAPED.map(job_shaped_bytes))
