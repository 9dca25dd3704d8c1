"""HF transformers as the oracle: tiny random checkpoints and greedy generate() per prompt."""

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from llm_worker.config import EngineSettings
from llm_worker.engine.llm_engine import LLMEngine
from llm_worker.schemas import SamplingParams

# (name, model_type, num_heads, num_kv_heads, head_dim): GQA ratios 1, 3, 4; head_dim 64 and 128
TINY_CONFIGS = [
    ("llama-gqa1-d64", "llama", 4, 4, 64),
    ("qwen2-gqa3-d64", "qwen2", 6, 2, 64),
    ("qwen3-gqa4-d128", "qwen3", 8, 2, 128),
    ("llama-gqa3-d128", "llama", 6, 2, 128),
]
TINY_VOCAB = 1000


def make_tiny_checkpoint(
    folder: Path, model_type: str, num_heads: int, num_kv_heads: int, head_dim: int, seed: int = 0
) -> Path:
    cfg = AutoConfig.for_model(
        model_type,
        vocab_size=TINY_VOCAB,
        hidden_size=64 * num_heads,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=512,
        initializer_range=0.05,
        tie_word_embeddings=model_type == "qwen3",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(folder)
    return folder


def hf_greedy(
    folder: Path, prompts: list[list[int]], max_new_tokens: int, ignore_eos: bool
) -> list[list[int]]:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if ignore_eos:
        model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    outputs = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                min_new_tokens=0,
            )
            outputs.append(out[0, len(prompt) :].tolist())
    return outputs


def engine_for(folder: Path | str, **overrides: object) -> LLMEngine:
    settings = EngineSettings(model=str(folder), device="cpu", dtype="float32", **overrides)  # type: ignore[arg-type]
    return LLMEngine.from_settings(settings)


def greedy(max_tokens: int, ignore_eos: bool) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=ignore_eos)
