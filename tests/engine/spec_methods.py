"""The speculation methods the engine tests run each check under, as settings overrides."""

import pytest

# n-gram prompt lookup, and a draft model made of the target's first layer.
each_spec_method = pytest.mark.parametrize(
    "spec",
    [{"speculative_method": "ngram"},
     {"speculative_method": "draft", "speculative_draft_layers": 1}],
    ids=["ngram", "draft"],
)  # fmt: skip
