"""Engines for the structured-output engine tests: a tiny random model that speaks the bundled
SmolLM2 tokenizer (fast steps, a real vocabulary for the grammar), and the bundled model."""

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from llm_worker.engine.llm_engine import LLMEngine
from tests.oracle import engine_for

SMOLLM2_VOCAB = 49_152


def make_tiny_smollm2_checkpoint(folder: Path, smollm2_dir: Path) -> Path:
    """Two small layers with random weights over SmolLM2's vocabulary and tokenizer."""
    cfg = AutoConfig.for_model(
        "llama",
        vocab_size=SMOLLM2_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        initializer_range=0.2,  # peaked logits: greedy ties are unlikely
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(folder)
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(folder)
    return folder


def tiny_engine(folder: Path, **overrides: Any) -> LLMEngine:
    settings: dict[str, Any] = {"max_num_seqs": 16, "max_model_len": 512,
                                "kv_cache_memory_gb": 0.05}  # fmt: skip
    return engine_for(folder, **{**settings, **overrides})


def chat_ids(engine: LLMEngine, message: str) -> list[int]:
    tokenizer = engine.tokenizer
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
    )
    return list(tokenizer.encode(text, add_special_tokens=False))
