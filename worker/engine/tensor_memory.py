"""Peak bytes of the tensors a piece of code allocates, on any device: how the CPU path profiles
a step (CUDA has the caching allocator's own statistics).

A dispatch mode sees every op's outputs; each new storage counts until it is freed (a weakref
on the storage, which torch keeps alive exactly as long as its data). An op's internal scratch,
which it frees before returning, is not seen.

With `shapes_only`, ops that return large floating tensors are not computed: they run on meta
tensors for their shapes and return uninitialised tensors of those shapes, so a forward over
thousands of tokens costs its allocations, not its arithmetic. Values then mean nothing, so this
is only for code whose control flow reads no floating values: a model's forward, not a sampler.
"""

import functools
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

# Outputs up to this many elements, and integer or bool ones (step metadata the host reads back),
# are always computed.
SMALL_NUMEL = 4096


class TensorMemoryTracker(TorchDispatchMode):
    def __init__(self, shapes_only: bool = False) -> None:
        super().__init__()
        self.shapes_only = shapes_only
        self.live_bytes = 0
        self.peak_bytes = 0
        self._seen: dict[int, weakref.ref[torch.UntypedStorage]] = {}

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = self._run(func, args, kwargs) if self.shapes_only else func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._count(t.untyped_storage())
        return out

    def _count(self, storage: torch.UntypedStorage) -> None:
        key = storage.data_ptr()
        known = self._seen.get(key)
        if key == 0 or (known is not None and known() is storage):
            return
        nbytes = storage.nbytes()
        self.live_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self._seen[key] = weakref.ref(storage, functools.partial(self._release, key, nbytes))

    def _release(self, key: int, nbytes: int, _: object) -> None:
        self.live_bytes -= nbytes
        ref = self._seen.get(key)
        if ref is not None and ref() is None:
            del self._seen[key]

    def _run(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The op itself where its result may be read (small, integer, views of real data), an
        uninitialised result of the right shape where it is large floating data."""
        schema = func._schema
        if any(r.alias_info is not None for r in schema.returns):
            return func(*args, **kwargs)  # a view, or an in-place op returning its input
        try:
            meta_out = func(*tree_map(_to_meta, args), **tree_map(_to_meta, kwargs))
        except Exception:  # data-dependent shapes (nonzero, ...): compute it
            return func(*args, **kwargs)
        meta_tensors = [t for t in tree_flatten(meta_out)[0] if isinstance(t, torch.Tensor)]
        if all(t.numel() <= SMALL_NUMEL or not t.is_floating_point() for t in meta_tensors):
            return func(*args, **kwargs)
        device = next(
            (t.device for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)),
            torch.device(kwargs.get("device") or "cpu"),
        )
        return tree_map(lambda t: _empty_like_meta(t, device), meta_out)


def _to_meta(x: Any) -> Any:
    return x.to("meta") if isinstance(x, torch.Tensor) else x


def _empty_like_meta(t: Any, device: torch.device) -> Any:
    if not isinstance(t, torch.Tensor):
        return t
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)


def peak_tensor_bytes(fn: Callable[[], Any], shapes_only: bool = False) -> int:
    """Peak bytes of the tensors `fn` allocates and holds at once (what it returns included)."""
    tracker = TensorMemoryTracker(shapes_only)
    with tracker:
        result = fn()
    del result
    return tracker.peak_bytes
