"""Programmatic dependent launch (PDL, NVIDIA Hopper and later).

A kernel launched as a programmatic dependent may start while the kernel before it in the
stream is still running: its programs are placed as the earlier kernel's programs finish, and
each waits (`griddepcontrol.wait`, `tl.extra.cuda.gdc_wait`) for that kernel to complete, and
its writes to show, before it reads anything that kernel wrote. What comes before the wait
overlaps the kernel before: the launch itself, and loads of what no kernel of this step
writes (the step's metadata, which the host copies in before the step; weights).

Rules every kernel here keeps with `PDL` on:
- nothing is stored before the wait, and only inputs the kernel right before cannot have
  written are loaded (each launcher says which);
- every program waits, also one with nothing to do: the launch must not complete before the one
  it depends on, or a plain launch after it could overtake that one.
Under these rules a chain of such launches, with plain launches (cuBLAS, torch) between them,
orders every read after the write it depends on.

When the next launch may start is up to the kernel before it: as that kernel's programs exit,
by default, or as soon as all of them have called `griddepcontrol.launch_dependents`
(`tl.extra.cuda.gdc_launch_dependents`). That changes only speed, never what is read: every
dependent waits for the whole launch before it all the same.
"""

import functools

import torch

try:
    from triton.language.extra.cuda import gdc_wait  # noqa: F401  (triton >= 3.4)

    _HAS_GDC = True
except ImportError:
    _HAS_GDC = False


@functools.cache
def _capability_major(device_index: int) -> int:
    return torch.cuda.get_device_capability(device_index)[0]


def pdl_device(device: torch.device) -> bool:
    """Whether launches on `device` can be programmatic dependents: an NVIDIA GPU of compute
    capability 9.0 or later, and a Triton with grid dependency control."""
    if device.type != "cuda" or torch.version.hip is not None or not _HAS_GDC:
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _capability_major(index) >= 9


# RMSNorm, rotary and store_kv run one program a token (and head). In a step of at most this
# many tokens they let the next launch start as they start; in the attention half of a decoder
# layer that puts Qwen3's q/k norms, rotary, store_kv and attention on the GPU while the QKV
# matmul still runs, so a small decode step hides those launches (about 2% a token at batch
# 1). Where a plain launch follows, a matmul, it changes nothing. Larger steps keep the default:
# there attention launched that early ran slower (docs/benchmarks.md, "How the attention rules
# were chosen").
EARLY_DEPENDENTS_MAX_TOKENS = 4


def dependents_at_start(pdl: bool, num_tokens: int) -> bool:
    """Whether a per-token launch (RMSNorm, rotary, store_kv) lets the next launch start as it
    starts, rather than as its programs exit (EARLY_DEPENDENTS_MAX_TOKENS): only a programmatic
    dependent launch (`pdl`, already checked with pdl_device) has a next launch to let start."""
    return pdl and num_tokens <= EARLY_DEPENDENTS_MAX_TOKENS


def launch_options(pdl: bool) -> dict[str, bool]:
    """The Triton launch options of a programmatic dependent launch (none for a plain one)."""
    return {"launch_pdl": True} if pdl else {}
