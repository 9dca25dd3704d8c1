"""A quantized checkpoint served end to end: the engine (chunked prefill, paged cache, prefix
caching) detects the format from config.json and greedy-decodes the tokens HF transformers
decodes from the dequantized weights with the format's input quantization."""

from pathlib import Path

import pytest
import torch

from tests.oracle import engine_for, greedy, make_tiny_checkpoint
from tests.quant import formats
from tests.quant.oracle import hf_model, write_quantized

PROMPTS = [[5, 17, 300, 42, 7], [999, 64, 128, 3, 11, 250, 500, 1, 77, 90, 13, 600, 2, 8, 9, 10,
           400, 401, 402, 403, 44, 45]]  # fmt: skip
MAX_NEW = 10


def _hf_greedy(model: torch.nn.Module, prompt: list[int]) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(MAX_NEW):  # full forward each step: no cache, the plainest oracle
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.mark.parametrize(
    ("quantizer", "config"),
    [
        (formats.awq(128), formats.awq_config(128)),
        (formats.compressed_tensors_fp8("FP8_DYNAMIC"),
         formats.compressed_tensors_config("FP8_DYNAMIC")),
    ],
    ids=["awq", "ct-fp8-dynamic"],
)  # fmt: skip
def test_engine_greedy_matches_hf(
    tmp_path: Path, quantizer: formats.Quantizer, config: dict
) -> None:
    dense = make_tiny_checkpoint(tmp_path / "dense", "llama", 4, 2, 64)
    layers = write_quantized(dense, tmp_path / "quantized", quantizer, config)
    oracle = hf_model(dense, layers)
    expected = [_hf_greedy(oracle, p) for p in PROMPTS]
    engine = engine_for(tmp_path / "quantized", max_num_batched_tokens=8)  # chunked prefill
    outputs = engine.generate(PROMPTS, greedy(MAX_NEW, ignore_eos=True))
    assert [o.output_token_ids for o in outputs] == expected
