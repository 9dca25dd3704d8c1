"""Request-level faults: an exception in one request's own work fails that request, not the
batch or the process. Only a device fault (CUDA error, out of memory) is fatal: the device's
state is then unknown for every request. No torch here: torch's error types are told by name, so
the torch-free scheduler and update can apply the same rule.
"""

import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

log = logging.getLogger(__name__)

R = TypeVar("R")
S = TypeVar("S")

NO_FAULTS: Mapping[Any, str] = MappingProxyType({})
_TORCH_DEVICE_ERRORS = frozenset({"OutOfMemoryError", "AcceleratorError"})


def is_device_fault(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    if any(c.__name__ in _TORCH_DEVICE_ERRORS and c.__module__.startswith("torch")
           for c in type(exc).__mro__):  # fmt: skip
        return True
    return isinstance(exc, RuntimeError) and "CUDA" in str(exc)


def fault_message(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def isolating_faults(
    batch: Callable[[], R],
    num_rows: int,
    single: Callable[[int], S],
    combine: Callable[[list[S | None]], R],
) -> tuple[R, Mapping[int, str]]:
    """`batch()`, or when it raises (not a device fault), each row alone: `single(i)` for every
    row, `combine` of what they gave (None for a row that raised), and why each of those failed.
    The batch is tried first, so a step without faults pays nothing for this."""
    try:
        return batch(), NO_FAULTS
    except Exception as exc:
        if is_device_fault(exc):
            raise
        log.warning("a batch of %d rows failed (%s); running each alone", num_rows,
                    fault_message(exc))  # fmt: skip
    parts: list[S | None] = []
    faults: dict[int, str] = {}
    for i in range(num_rows):
        try:
            parts.append(single(i))
        except Exception as exc:
            if is_device_fault(exc):
                raise
            parts.append(None)
            faults[i] = fault_message(exc)
    return combine(parts), faults
