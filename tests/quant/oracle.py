"""Write a quantized copy of a tiny dense checkpoint; logits of HF transformers running the
dequantized weights (with each quantized layer's input fake-quantized as the format says)
against the worker's own model loaded from the quantized checkpoint."""

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from llm_worker.models.attention import TORCH_BACKEND, AttentionBackend, AttentionMetadata
from llm_worker.models.llama import CausalLM
from llm_worker.models.loader import ModelSource, load_model
from tests.quant.formats import PROJECTIONS, Quantized, Quantizer

BLOCK_SIZE = 16


def write_quantized(
    dense: Path, out: Path, quantize: Quantizer, quantization_config: dict | None
) -> dict[str, Quantized]:
    """`out`: `dense` with each projection's weight replaced by its quantized tensors. Returns
    the Quantized of each module (model.layers.0.self_attn.q_proj: ...)."""
    out.mkdir(parents=True, exist_ok=True)
    tensors, layers = {}, {}
    for name, tensor in load_file(dense / "model.safetensors").items():
        module, _, suffix = name.rpartition(".")
        if suffix == "weight" and module.rsplit(".", 1)[-1] in PROJECTIONS:
            layers[module] = quantize(module, tensor)
            tensors.update({f"{module}.{s}": t for s, t in layers[module].tensors.items()})
        else:
            tensors[name] = tensor
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "model.safetensors")
    config = json.loads((dense / "config.json").read_text())
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    (out / "config.json").write_text(json.dumps(config))
    for extra in ("generation_config.json",):
        if (dense / extra).exists():
            shutil.copy(dense / extra, out / extra)
    return layers


def hf_model(dense: Path, layers: dict[str, Quantized]) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(dense, dtype=torch.float32).eval()
    for module_name, quantized in layers.items():
        module = model.get_submodule(module_name)
        module.weight.data = quantized.dequantized.clone()
        fake = quantized.input_quant
        if fake is not None:
            module.register_forward_pre_hook(lambda m, args, fake=fake: (fake(args[0]),))
    return model


def hf_logits(dense: Path, layers: dict[str, Quantized], ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(dense, layers)(torch.tensor([ids])).logits[0]


def load(
    folder: Path, backend: AttentionBackend = TORCH_BACKEND, quantization: str | None = None
) -> CausalLM:
    source = ModelSource(json.loads((folder / "config.json").read_text()), folder)
    return load_model(source, backend, torch.float32, torch.device("cpu"), dummy=False, seed=0,
                      max_position=256, quantization=quantization)  # fmt: skip


def prefill_logits(model: CausalLM, ids: list[int]) -> torch.Tensor:  # [len(ids), vocab]
    """One sequence's prefill over a fresh paged cache."""
    cfg, n = model.config, len(ids)
    num_blocks = -(-n // BLOCK_SIZE)
    shape = (num_blocks, BLOCK_SIZE, cfg.num_kv_heads, cfg.head_dim)
    kv = [(torch.zeros(shape), torch.zeros(shape)) for _ in range(cfg.num_layers)]
    meta = AttentionMetadata.whole_prefill(n, BLOCK_SIZE)
    with torch.inference_mode():
        hidden = model(torch.tensor(ids), torch.arange(n), kv, meta)
        return model.compute_logits(hidden)


def assert_logits_close(
    got: torch.Tensor, want: torch.Tensor, max_rows_off: int = 0, tol: float = 1e-4
) -> None:
    """Every position's logits agree to `tol`, but for at most `max_rows_off` positions where an
    FP8 input rounded to the neighbouring e4m3 number (a fused RMSNorm sums its squares in
    another order than torch): those stay within 3% of the logits' scale, where a wrong layout
    or scale would be off everywhere."""
    assert got.shape == want.shape
    row_err = (got - want).abs().amax(-1)
    scale = want.abs().max().item()
    off = (row_err > tol + tol * scale).nonzero().flatten().tolist()
    assert len(off) <= max_rows_off, f"positions {off} differ by up to {row_err.max():.3g}"
    assert row_err.max().item() <= 0.03 * scale, f"{row_err.max():.3g} against {scale:.3g}"
