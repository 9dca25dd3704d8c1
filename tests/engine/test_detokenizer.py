"""The incremental detokenizer against the tokenizer's own decode of the whole output (special
tokens skipped): on the bundled model's tokenizer (byte-level BPE, decoded through the backend's
DecodeStream) and on a WordPiece tokenizer whose decode cleans up spaces (the window through
transformers' decode, as before the stream), token by token, with stop strings cutting the text
where they match."""

import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from llm_worker.engine.detokenizer import IncrementalDetokenizer, stream_step

TEXT = (
    "Invoice #4471 — total: 1,234.50 EUR (due 2026-12-31). Naïve café, 東京, emoji 🎉 ok?\n"
    '{"name": "Ada", "tags": ["x", "y"]} won\'t don\'t it\'s . , ! ?'
)


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_dir: Path):
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    words = ["[UNK]", "[SEP]", "a", "b", "c", "d", "e", ".", ",", "!", "?", "'", "s", "n", "t",
             "won", "don", "it", "##s", "##t", "hello", "world"]  # fmt: skip
    backend = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(cleanup=False)  # transformers' clean-up alone
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        sep_token="[SEP]",
        clean_up_tokenization_spaces=True,
    )


def pushed(tokenizer, ids: list[int], stop: list[str] | None = None, include_stop=False):
    detok = IncrementalDetokenizer(tokenizer, stop or [], include_stop)
    for i, token_id in enumerate(ids):
        if detok.push(token_id):
            return detok, i
    return detok, None


def test_the_bundled_tokenizer_streams_through_its_backend(smollm2_tokenizer):
    assert stream_step(smollm2_tokenizer) is not None


def test_a_decode_that_cleans_up_spaces_keeps_the_window(wordpiece_tokenizer):
    ids = wordpiece_tokenizer.encode("hello world . a , b !", add_special_tokens=False)
    raw = wordpiece_tokenizer.backend_tokenizer.decode(ids)
    assert raw != wordpiece_tokenizer.decode(ids)  # the clean-up is on: the backend differs
    assert stream_step(wordpiece_tokenizer) is None
    unclean = PreTrainedTokenizerFast(
        tokenizer_object=wordpiece_tokenizer.backend_tokenizer,
        unk_token="[UNK]",
        clean_up_tokenization_spaces=False,
    )
    assert stream_step(unclean) is not None


@pytest.mark.parametrize("source", ["text", "random ids", "special tokens"])
def test_the_text_is_the_tokenizers_decode_of_every_token(smollm2_tokenizer, source):
    tok = smollm2_tokenizer
    rng = random.Random(source)
    if source == "text":
        ids = tok.encode(TEXT, add_special_tokens=False)
    elif source == "random ids":
        ids = [rng.randrange(tok.vocab_size) for _ in range(600)]
    else:  # special tokens skipped wherever they fall
        words = tok.encode(TEXT, add_special_tokens=False)
        ids = [t for w in words for t in ([w, tok.eos_token_id] if rng.random() < 0.2 else [w])]
    detok, stopped = pushed(tok, ids)
    assert stopped is None
    assert detok.text == tok.decode(ids, skip_special_tokens=True)
    for n in range(1, len(ids), 37):  # and at every length, the text so far (no partial char)
        partial, _ = pushed(tok, ids[:n])
        whole = tok.decode(ids[:n], skip_special_tokens=True)
        assert whole.startswith(partial.text) and len(whole) - len(partial.text) <= 1


def test_the_window_gives_the_cleaned_up_decode(wordpiece_tokenizer):
    tok = wordpiece_tokenizer
    ids = tok.encode("hello world . a , b ! c ? d . e", add_special_tokens=False)
    detok, _ = pushed(tok, ids)
    assert detok.text == tok.decode(ids, skip_special_tokens=True) == "hello world. a, b! c? d. e"


@pytest.mark.parametrize("include_stop", [False, True])
def test_a_stop_string_cuts_the_text_at_its_first_match(smollm2_tokenizer, include_stop):
    tok = smollm2_tokenizer
    ids = tok.encode(TEXT, add_special_tokens=False)
    detok, stopped_at = pushed(tok, ids, stop=["東京", "EUR"], include_stop=include_stop)
    full = tok.decode(ids, skip_special_tokens=True)
    cut = full.index("EUR") + (len("EUR") if include_stop else 0)
    assert detok.text == full[:cut]
    # it stopped on the token that completed the match, not later
    assert stopped_at is not None
    assert "EUR" not in tok.decode(ids[:stopped_at], skip_special_tokens=True)
