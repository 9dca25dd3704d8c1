"""The triton backend's quantized path (FP8 RMSNorm and SiLU*mul, the W4A16 and block-FP8
GEMMs) gives the torch backend's logits on the same quantized checkpoints: under the CPU
interpreter here (fp32; FP8 GEMMs by the reference there, torch._scaled_mm being per-tensor only
on the CPU), on the GPU in test_quant_model_gpu.py. Where a fused RMSNorm's sum of squares,
summed in another order, rounds an FP8 input to the neighbouring value, a position or two may
differ a little (`assert_logits_close`). And dummy quantized weights have the scale
of the dense ones."""

from pathlib import Path

import pytest
import torch

from llm_worker.models.attention import TORCH_BACKEND, get_backend
from llm_worker.models.llama import CausalLM
from llm_worker.models.loader import ModelSource, load_model
from llm_worker.models.quant.fp8 import Fp8Linear
from tests.oracle import make_tiny_checkpoint
from tests.quant import formats
from tests.quant.oracle import assert_logits_close, load, prefill_logits, write_quantized
from tests.quant.test_checkpoints import PROMPT

TRITON = get_backend("triton", torch.device("cpu"), fused_ops=True, pdl=False)


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("dense"), "qwen2", 4, 2, 64)


@pytest.mark.parametrize("name", list(formats.CHECKPOINT_FORMATS))
def test_triton_backend_matches_torch_backend(dense: Path, tmp_path: Path, name: str) -> None:
    quantizer, config = formats.CHECKPOINT_FORMATS[name]()
    write_quantized(dense, tmp_path, quantizer, config)
    want = prefill_logits(load(tmp_path), PROMPT)
    got = prefill_logits(load(tmp_path, TRITON), PROMPT)
    assert_logits_close(got, want, max_rows_off=0 if name in ("awq", "gptq") else 2)


def test_triton_backend_fuses_fp8_quantization(dense: Path) -> None:
    model = load(dense, TRITON, quantization="fp8")
    qkv = model.model.layers[0].self_attn.qkv_proj
    assert isinstance(qkv, Fp8Linear) and qkv.ops.name == "triton"
    want = prefill_logits(load(dense, quantization="fp8"), PROMPT)
    assert_logits_close(prefill_logits(model, PROMPT), want, max_rows_off=2)


TINY = {"architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 256,
        "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 64, "max_position_embeddings": 64}  # fmt: skip


@pytest.mark.parametrize("quantization", ["fp8", "awq", "gptq"])
def test_dummy_quantized_weights(quantization: str) -> None:
    """Random weights of each quantized form for speed runs without checkpoints: the same
    N(0, 0.02) scale as dense dummy weights once dequantized, fewer bytes, finite logits."""
    source = ModelSource(hf_config=TINY, folder=None)

    def dummy(q: str | None) -> CausalLM:
        return load_model(source, TORCH_BACKEND, torch.float32, torch.device("cpu"),
                          dummy=True, seed=1, max_position=64, quantization=q)  # fmt: skip

    dense, quantized = dummy(None), dummy(quantization)
    assert quantized.matmul_weight_bytes() < dense.matmul_weight_bytes() / 2
    for linear in quantized.linear_layers():
        x = torch.randn(64, linear.spec.in_features)
        spread = linear(x).std() / (x.std() * (linear.spec.in_features**0.5))
        assert 0.015 < spread.item() < 0.025  # a weight std of 0.02
    logits = prefill_logits(quantized, [t % 256 for t in PROMPT])
    assert logits.isfinite().all()
