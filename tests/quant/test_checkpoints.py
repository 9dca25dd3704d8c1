"""Quantized checkpoints in each format, written by the tests (tests/quant/formats.py), load
into the worker's model and give the logits of HF transformers running the dequantized weights
with each layer's input fake-quantized as the format says (torch backend, fp32, CPU).

int4 layers multiply the same dequantized weights, so they agree to fp32 rounding. FP8 layers
quantize their inputs too: where the two models' activations differ in their last bits a value
may round to the neighbouring e4m3 number, so they are held to 1e-3, still far under what
leaving the activations unquantized changes (0.3 to 1.5 in these logits of magnitude 3).
"""

from pathlib import Path

import pytest
import torch

from llm_worker.models.quant.block_fp8 import BlockFp8Linear
from llm_worker.models.quant.fp8 import Fp8Linear
from llm_worker.models.quant.int4 import Int4Linear
from tests.oracle import make_tiny_checkpoint
from tests.quant import formats
from tests.quant.oracle import hf_logits, load, prefill_logits, write_quantized

PROMPT = [5, 17, 300, 42, 7, 999, 64, 128, 3, 11, 250, 500, 1, 77, 90, 13, 600, 2]
INT4_TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}
FP8_TOLERANCE = {"rtol": 1e-3, "atol": 1e-3}

# (id, quantizer, quantization_config, layer class, tolerance)
FORMATS = [
    ("awq-g128", formats.awq(128), formats.awq_config(128), Int4Linear, INT4_TOLERANCE),
    ("awq-g64", formats.awq(64), formats.awq_config(64), Int4Linear, INT4_TOLERANCE),
    ("gptq-sym-v1", formats.gptq(128, True, True), formats.gptq_config(128, True, True),
     Int4Linear, INT4_TOLERANCE),
    ("gptq-asym-v1", formats.gptq(64, False, True), formats.gptq_config(64, False, True),
     Int4Linear, INT4_TOLERANCE),
    ("gptq-asym-v2", formats.gptq(128, False, False), formats.gptq_config(128, False, False),
     Int4Linear, INT4_TOLERANCE),
    ("ct-fp8-dynamic", formats.compressed_tensors_fp8("FP8_DYNAMIC"),
     formats.compressed_tensors_config("FP8_DYNAMIC"), Fp8Linear, FP8_TOLERANCE),
    ("ct-fp8-static", formats.compressed_tensors_fp8("FP8"),
     formats.compressed_tensors_config("FP8"), Fp8Linear, FP8_TOLERANCE),
    ("ct-fp8-block", formats.compressed_tensors_fp8("FP8_BLOCK"),
     formats.compressed_tensors_config("FP8_BLOCK"), BlockFp8Linear, FP8_TOLERANCE),
    ("fp8-block-inv", formats.block_fp8_inv(), formats.BLOCK_FP8_CONFIG, BlockFp8Linear,
     FP8_TOLERANCE),
]  # fmt: skip
# (name, model_type, heads, kv_heads, head_dim): q, k, v of 128-multiples (block FP8), biases
# (Qwen2), q/k norms and tied embeddings (Qwen3)
ARCHS = [("llama", "llama", 4, 2, 64), ("qwen2", "qwen2", 4, 2, 64), ("qwen3", "qwen3", 4, 2, 64)]


@pytest.fixture(scope="module", params=ARCHS, ids=[a[0] for a in ARCHS])
def dense(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    name, model_type, heads, kv_heads, head_dim = request.param
    return make_tiny_checkpoint(tmp_path_factory.mktemp(name), model_type, heads, kv_heads,
                                head_dim)  # fmt: skip


@pytest.mark.parametrize(("quantizer", "config", "layer_cls", "tolerance"),
                         [f[1:] for f in FORMATS], ids=[f[0] for f in FORMATS])  # fmt: skip
def test_checkpoint_matches_dequantized_hf(
    dense: Path,
    tmp_path: Path,
    quantizer: formats.Quantizer,
    config: dict,
    layer_cls: type,
    tolerance: dict[str, float],
) -> None:
    layers = write_quantized(dense, tmp_path / "quantized", quantizer, config)
    model = load(tmp_path / "quantized")
    assert {type(m) for m in model.linear_layers()} == {layer_cls}
    got = prefill_logits(model, PROMPT)
    want = hf_logits(dense, layers, PROMPT)
    torch.testing.assert_close(got, want, **tolerance)
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9


def test_fp8_at_load_matches_per_channel_hf(dense: Path) -> None:
    """--quantization fp8 on a dense checkpoint: per-channel e4m3 weights, tokens per token."""
    layers = write_quantized(dense, dense.parent / "oracle-only", formats.fp8_at_load(), None)
    model = load(dense, quantization="fp8")
    assert {type(m) for m in model.linear_layers()} == {Fp8Linear}
    torch.testing.assert_close(prefill_logits(model, PROMPT), hf_logits(dense, layers, PROMPT),
                               **FP8_TOLERANCE)  # fmt: skip


def test_fp8_at_load_is_the_per_channel_dynamic_checkpoint(dense: Path, tmp_path: Path) -> None:
    """Quantizing at load and loading compressed-tensors' FP8_DYNAMIC of the same weights give
    the same layers, bit for bit, and so the same logits."""
    write_quantized(dense, tmp_path / "ct", formats.compressed_tensors_fp8("FP8_DYNAMIC"),
                    formats.compressed_tensors_config("FP8_DYNAMIC"))  # fmt: skip
    at_load, stored = load(dense, quantization="fp8"), load(tmp_path / "ct")
    for a, b in zip(at_load.linear_layers(), stored.linear_layers(), strict=True):
        assert isinstance(a, Fp8Linear) and isinstance(b, Fp8Linear)
        assert torch.equal(a.weight.view(torch.uint8), b.weight.view(torch.uint8))
        assert torch.equal(a.weight_scale, b.weight_scale)
    assert torch.equal(prefill_logits(at_load, PROMPT), prefill_logits(stored, PROMPT))
