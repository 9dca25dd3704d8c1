"""Kernel tests: each draws its data from a fixed seed (tests/conftest.py sets TRITON_INTERPRET
for the CPU)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Each test draws its random batches from the same seed, whatever ran before it: a failure
    reproduces alone, and adding a test does not change the data of the ones after it."""
    torch.manual_seed(0)
