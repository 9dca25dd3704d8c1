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


def launch_options(pdl: bool) -> dict[str, bool]:
    """The Triton launch options of a programmatic dependent launch (none for a plain one)."""
    return {"launch_pdl": True} if pdl else {}
