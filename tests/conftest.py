"""Shared fixtures; tests marked `gpu` are skipped where CUDA is not available.

Without CUDA the Triton kernels run under the CPU interpreter (at small sizes). TRITON_INTERPRET
is read when a kernel is decorated, so it is set here, before any test module imports one.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from llm_worker.config import EngineSettings
from llm_worker.jobs import batch_file_prompt_ids
from llm_worker.models.bundled import bundled_model_dir

# `python -m pytest` from the checkout puts it first on sys.path, where kernels/ would shadow
# Hugging Face's `kernels`, which transformers imports (worker/__main__.py does the same). Nothing
# above imports either; every test module is imported after this.
_CHECKOUT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != _CHECKOUT]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "prompts.jsonl"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return bundled_model_dir(EngineSettings().cache_dir)


@pytest.fixture(scope="session")
def real_prompts(smollm2_dir: Path) -> list[list[int]]:
    """Token ids of the example prompts: chat ones through the chat template, mixed lengths."""
    from transformers import AutoTokenizer

    return batch_file_prompt_ids(AutoTokenizer.from_pretrained(smollm2_dir), EXAMPLES)
