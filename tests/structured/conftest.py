"""The bundled SmolLM2 tokenizer as the grammar backend sees it, shared by the structured tests."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_worker.models.config import ModelConfig
from llm_worker.structured.compiler import GrammarCompiler
from llm_worker.structured.stats import StatsRecorder
from llm_worker.structured.vocab import GrammarVocab, grammar_vocab


@pytest.fixture(scope="session")
def smollm2_config(smollm2_dir: Path) -> ModelConfig:
    return ModelConfig.from_hf(json.loads((smollm2_dir / "config.json").read_text()))


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def vocab(tokenizer: Any, smollm2_config: ModelConfig) -> GrammarVocab:
    return grammar_vocab(tokenizer, smollm2_config.vocab_size, smollm2_config.eos_token_ids)


@pytest.fixture(scope="session")
def compiler(vocab: GrammarVocab) -> Iterator[GrammarCompiler]:
    compiler = GrammarCompiler(vocab, StatsRecorder())
    yield compiler
    compiler.shutdown()
