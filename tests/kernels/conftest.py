"""Without CUDA the Triton kernels run under the CPU interpreter, at small sizes.

TRITON_INTERPRET must be set before triton is imported (and before any @triton.jit decorates),
hence at conftest import time, ahead of every test module here.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Each test draws its random batches from the same seed, whatever ran before it: a failure
    reproduces alone, and adding a test does not change the data of the ones after it."""
    torch.manual_seed(0)
