#!/usr/bin/env python
"""What an FP8 (e4m3) KV cache does to the bundled model's predictions, against an fp32 cache.

Every example prompt (examples/prompts.jsonl, chat ones through the template) is prefilled
through the paged cache; at every position, the next-token distribution with the cache in fp32
is the reference. Printed for an e4m3 cache with scales 1.0 (what --kv-cache-dtype fp8 uses
without checkpoint scales), with per-layer scales calibrated on these same prompts (amax / 448:
the most K and V can be), and for a bf16 cache: top-1 agreement and mean KL divergence (nats).
Runs on the CPU (fp32 weights, torch backend).

    python scripts/bench_kv_fp8_quality.py
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from llm_worker.config import EngineSettings
from llm_worker.engine.builder import resolve_dtype
from llm_worker.engine.model_runner import make_kv_caches
from llm_worker.jobs import batch_file_prompt_ids
from llm_worker.kernels.reference import FP8_E4M3_MAX
from llm_worker.models.attention import AttentionMetadata, KVScale, get_backend
from llm_worker.models.kv_cache_format import apply_kv_scales
from llm_worker.models.llama import CausalLM
from llm_worker.models.loader import load_model, resolve

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "prompts.jsonl"
BLOCK_SIZE = 16


def prefill(
    model: CausalLM, prompt: list[int], dtype: torch.dtype, scales: tuple[KVScale, ...]
) -> tuple[torch.Tensor, list[tuple[float, float]]]:
    """Log-probabilities at every position of `prompt` over a fresh cache of `dtype`, and each
    layer's largest |K| and |V| as stored."""
    n = len(prompt)
    num_blocks = -(-n // BLOCK_SIZE)
    caches = make_kv_caches(model, num_blocks, BLOCK_SIZE, dtype, torch.device("cpu"))
    apply_kv_scales(model, scales)
    meta = AttentionMetadata.whole_prefill(n, BLOCK_SIZE)
    with torch.inference_mode():
        hidden = model(torch.tensor(prompt), torch.arange(n), caches, meta)
        logprobs = model.compute_logits(hidden).log_softmax(-1)
    amax = [(float(k.float().abs().max()), float(v.float().abs().max())) for k, v in caches]
    return logprobs, amax


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    args = p.parse_args()
    settings = EngineSettings(model=args.model, device="cpu")
    source = resolve(settings.model, settings.cache_dir)
    assert source.folder is not None, "needs a model with a tokenizer"
    device = torch.device("cpu")
    model = load_model(source, get_backend("torch", device), resolve_dtype("auto", device),
                       device, dummy=False, seed=0, max_position=8192)  # fmt: skip
    prompts = batch_file_prompt_ids(AutoTokenizer.from_pretrained(source.folder), EXAMPLES)
    unit = (KVScale(),) * model.config.num_layers
    references, amax = [], [(0.0, 0.0)] * model.config.num_layers
    for prompt in prompts:
        logprobs, prompt_amax = prefill(model, prompt, torch.float32, unit)
        references.append(logprobs)
        amax = [(max(a, b), max(c, d)) for (a, c), (b, d) in zip(amax, prompt_amax, strict=True)]
    calibrated = tuple(KVScale(k / FP8_E4M3_MAX, v / FP8_E4M3_MAX) for k, v in amax)
    cases = [
        ("e4m3, scales 1.0", torch.float8_e4m3fn, unit),
        ("e4m3, scales amax/448", torch.float8_e4m3fn, calibrated),
        ("bf16", torch.bfloat16, unit),
    ]
    num_positions = sum(len(prompt) for prompt in prompts)
    print(f"{args.model}: {len(prompts)} prompts, {num_positions} positions, against fp32 K/V")
    for name, dtype, scales in cases:
        agree, kl = 0, 0.0
        for prompt, reference in zip(prompts, references, strict=True):
            logprobs, _ = prefill(model, prompt, dtype, scales)
            agree += int((logprobs.argmax(-1) == reference.argmax(-1)).sum())
            kl += float(F.kl_div(logprobs, reference, log_target=True, reduction="sum"))
        print(f"{name:>22}: top-1 agreement {agree / num_positions:.4f}, "
              f"mean KL {kl / num_positions:.5f} nats")  # fmt: skip


if __name__ == "__main__":
    main()
