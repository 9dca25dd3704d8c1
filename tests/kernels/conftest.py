"""Without CUDA the Triton kernels run under the CPU interpreter, at small sizes.

TRITON_INTERPRET must be set before triton is imported (and before any @triton.jit decorates),
hence at conftest import time, ahead of every test module here.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
