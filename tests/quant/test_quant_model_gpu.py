"""Quantized checkpoints on CUDA: the triton backend in bf16 (fused FP8 RMSNorm and SiLU*mul,
torch._scaled_mm, the W4A16 and block-FP8 kernels) against the torch backend in fp32 on the
same GPU (dequantize, then multiply), within what the torch backend in bf16 is off by; and the
engine replaying its CUDA graphs over quantized layers giving the tokens of eager steps."""

import json
from pathlib import Path

import pytest
import torch

from llm_worker.config import EngineSettings
from llm_worker.engine.llm_engine import LLMEngine
from llm_worker.models.attention import AttentionBackend, AttentionMetadata, get_backend
from llm_worker.models.config import NAMED_SHAPES
from llm_worker.models.llama import CausalLM
from llm_worker.models.loader import ModelSource, load_model
from tests.oracle import greedy, make_tiny_checkpoint
from tests.quant.formats import CHECKPOINT_FORMATS, NEEDS_COMPRESSED_TENSORS
from tests.quant.oracle import write_quantized
from tests.quant.test_checkpoints import PROMPT

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("dense"), "qwen2", 4, 2, 64)


def _load(folder: Path, backend: str, dtype: torch.dtype, quantization: str | None) -> CausalLM:
    source = ModelSource(json.loads((folder / "config.json").read_text()), folder)
    chosen: AttentionBackend = get_backend(backend, CUDA)
    return load_model(source, chosen, dtype, CUDA, dummy=False, seed=0, max_position=256,
                      quantization=quantization)  # fmt: skip


def _logits(model: CausalLM, ids: list[int]) -> torch.Tensor:
    cfg, n, block = model.config, len(ids), 16
    num_blocks = -(-n // block)
    shape = (num_blocks, block, cfg.num_kv_heads, cfg.head_dim)
    dtype = next(model.parameters()).dtype
    kv = [(torch.zeros(shape, device=CUDA, dtype=dtype), torch.zeros(shape, device=CUDA,
          dtype=dtype)) for _ in range(cfg.num_layers)]  # fmt: skip
    meta = AttentionMetadata.whole_prefill(n, block, device=CUDA)
    with torch.inference_mode():
        return model.compute_logits(model(torch.tensor(ids, device=CUDA),
                                          torch.arange(n, device=CUDA), kv, meta))  # fmt: skip


def _formats(name: str) -> tuple:
    if name in NEEDS_COMPRESSED_TENSORS:
        pytest.importorskip("compressed_tensors")
    return CHECKPOINT_FORMATS[name]()


@pytest.mark.parametrize("name", [*CHECKPOINT_FORMATS, "fp8-at-load"])
def test_triton_bf16_matches_torch_fp32(dense: Path, tmp_path: Path, name: str) -> None:
    folder, quantization = dense, "fp8"
    if name != "fp8-at-load":
        quantizer, config = _formats(name)
        write_quantized(dense, tmp_path, quantizer, config)
        folder, quantization = tmp_path, None
    want = _logits(_load(folder, "torch", torch.float32, quantization), PROMPT)
    got = _logits(_load(folder, "triton", torch.bfloat16, quantization), PROMPT)
    # bf16 activations against fp32 ones: each FP8 input rounds some values the other way, a
    # whole e4m3 step (6%), and four layers compound it to several percent of the logits, and
    # this tiny random model's top logits are close enough for that to flip a fifth of its
    # argmaxes (the torch backend in bf16 on the CPU: 78% agree with fp32 for per-token FP8).
    # So the allowance is what the torch backend in bf16 itself shows here; a wrong layout or
    # scale would be off by the logits' whole size.
    allowed = _logits(_load(folder, "torch", torch.bfloat16, quantization), PROMPT)
    error, allowed_error = _relative_error(got, want), _relative_error(allowed, want)
    assert error < max(2 * allowed_error, 0.02), (error, allowed_error)
    assert _agreement(got, want) >= _agreement(allowed, want) - 0.2


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want).norm() / want.norm())


def _agreement(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.argmax(-1) == want.argmax(-1)).float().mean())


@pytest.mark.parametrize("name", ["awq", "ct-fp8-dynamic", "fp8-block"])
def test_cuda_graphs_replay_quantized_layers(dense: Path, tmp_path: Path, name: str) -> None:
    quantizer, config = _formats(name)
    write_quantized(dense, tmp_path, quantizer, config)
    prompts = [PROMPT, PROMPT[:5], PROMPT[3:]]
    runs = []
    for eager in (True, False):
        settings = EngineSettings(model=str(tmp_path), device="cuda", dtype="bfloat16",
                                  enforce_eager=eager, kv_cache_memory_gb=0.05)  # fmt: skip
        engine = LLMEngine.from_settings(settings)
        runs.append([o.output_token_ids for o in engine.generate(prompts, greedy(12, True))])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("quantization", ["fp8", "awq"])
def test_dummy_llama3_8b(quantization: str) -> None:
    """The quantized dummy loader at a named 8B shape: the weights land quantized and run."""
    source = ModelSource(NAMED_SHAPES["llama3-8b"], None)
    model = load_model(source, get_backend("triton", CUDA), torch.bfloat16, CUDA, dummy=True,
                       seed=0, max_position=256, quantization=quantization)  # fmt: skip
    # 7.0e9 parameters in the layers: FP8 7.0 GB, int4 3.5 GB (+ scales), + the 1.05 GB bf16 head
    limit = {"fp8": 8.2e9, "awq": 4.8e9}[quantization]
    assert model.matmul_weight_bytes() < limit
    assert _logits(model, PROMPT).isfinite().all()
