"""How many KV blocks the engine gets, from what the worst step leaves of the memory limit
(`memory_profile`), and the refusal at start-up, with what would fit, of settings under which a
step could run out of memory or the cache could not hold one sequence.

The cache gets: exactly --num-gpu-blocks-override blocks; or --kv-cache-memory-gb; or, on CUDA,
all that the profile leaves under --gpu-memory-utilization; on the CPU, 1 GiB or what is left if
that is less. Whichever it is, it must fit beside the worst step (then no step the settings
allow can take more than the limit) and hold one sequence of max_model_len tokens (then every
request max_model_len admits can run).
"""

from dataclasses import dataclass

from llm_worker.engine.block_manager import cdiv

DEFAULT_CPU_KV_CACHE_BYTES = 2**30
GIB = 2**30
SPARE_PERCENT = 10  # of the room a suggested smaller batch is sized for


class KVCacheDoesNotFit(ValueError):
    """The settings leave no room for the cache they ask for; the message says what fits."""


@dataclass(frozen=True)
class MemoryProfile:
    limit_bytes: int  # what the engine may hold in all
    in_use_bytes: int  # held before the KV cache: weights, CUDA context, other processes
    forward_bytes: int  # peak above in_use of the forward at the token budget
    sampler_bytes: int  # peak above in_use of sampling at max-num-seqs
    graph_bytes: int = 0  # the CUDA graphs' pool

    @property
    def activation_bytes(self) -> int:
        return max(self.forward_bytes, self.sampler_bytes)

    @property
    def kv_budget_bytes(self) -> int:
        return self.limit_bytes - self.in_use_bytes - self.activation_bytes - self.graph_bytes


@dataclass(frozen=True)
class KVCacheRequest:
    block_bytes: int  # one block of every layer's K and V (and a draft's)
    block_size: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    on_cuda: bool
    gpu_memory_utilization: float
    kv_cache_memory_gb: float | None = None
    num_blocks_override: int | None = None


def num_kv_blocks(request: KVCacheRequest, profile: MemoryProfile) -> int:
    budget = max(profile.kv_budget_bytes, 0)
    most_blocks = budget // request.block_bytes
    if request.num_blocks_override is not None:
        if request.num_blocks_override > most_blocks:
            raise KVCacheDoesNotFit(
                f"--num-gpu-blocks-override {request.num_blocks_override} takes "
                f"{_gib(request.num_blocks_override * request.block_bytes)}, more than the "
                f"{_gib(budget)} the worst step leaves ({_spent(request, profile)}): at most "
                f"{most_blocks} blocks fit"
            )
        num_blocks = request.num_blocks_override
    elif request.kv_cache_memory_gb is not None:
        wanted = int(request.kv_cache_memory_gb * GIB)
        if wanted > budget:
            raise KVCacheDoesNotFit(
                f"--kv-cache-memory-gb {request.kv_cache_memory_gb} is more than the "
                f"{_gib(budget)} the worst step leaves ({_spent(request, profile)}): give at "
                f"most {budget / GIB:.3f}, or {_what_fits(request, profile, most_blocks)}"
            )
        num_blocks = wanted // request.block_bytes
    elif request.on_cuda:
        num_blocks = most_blocks
    else:
        num_blocks = min(DEFAULT_CPU_KV_CACHE_BYTES, budget) // request.block_bytes
    # As vLLM: a cache that cannot hold one sequence of max_model_len is refused here, whichever
    # setting sized it, rather than failing each request it cannot hold.
    if num_blocks < cdiv(request.max_model_len, request.block_size):
        raise KVCacheDoesNotFit(_too_small(request, profile, num_blocks))
    return num_blocks


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / GIB:.2f} GiB"


def _spent(request: KVCacheRequest, profile: MemoryProfile) -> str:
    limit = "the memory limit"
    if request.on_cuda:
        limit = f"--gpu-memory-utilization {request.gpu_memory_utilization}"
    graphs = f", CUDA graphs {_gib(profile.graph_bytes)}" if profile.graph_bytes else ""
    return (
        f"of {_gib(profile.limit_bytes)} under {limit}: weights and what is already held "
        f"{_gib(profile.in_use_bytes)}, a forward of --max-num-batched-tokens "
        f"{request.max_num_batched_tokens} {_gib(profile.forward_bytes)}, sampling "
        f"--max-num-seqs {request.max_num_seqs} rows {_gib(profile.sampler_bytes)}{graphs}"
    )


def _too_small(request: KVCacheRequest, profile: MemoryProfile, num_blocks: int) -> str:
    num_tokens = max(num_blocks, 0) * request.block_size
    if request.num_blocks_override is not None:
        source = f"--num-gpu-blocks-override {num_blocks} blocks of {request.block_size} tokens"
    elif request.kv_cache_memory_gb is not None:
        source = f"--kv-cache-memory-gb {request.kv_cache_memory_gb}"
    else:
        source = f"the {_gib(max(profile.kv_budget_bytes, 0))} left ({_spent(request, profile)})"
    return (
        f"the KV cache would hold {num_tokens} tokens, less than one sequence of "
        f"--max-model-len {request.max_model_len}: {source}; what fits: "
        f"{_what_fits(request, profile, num_blocks)}"
    )


def _what_fits(request: KVCacheRequest, profile: MemoryProfile, num_blocks: int) -> str:
    """Settings, each alone, under which one sequence's cache fits beside the worst step (the
    cache the settings give holds num_blocks)."""
    fits = []
    if num_blocks > 0:
        fits.append(f"--max-model-len {num_blocks * request.block_size}")
    one_sequence_blocks = cdiv(request.max_model_len, request.block_size)
    if request.num_blocks_override is not None:
        if one_sequence_blocks * request.block_bytes <= max(profile.kv_budget_bytes, 0):
            fits.append(f"--num-gpu-blocks-override {one_sequence_blocks}")
        return ", or ".join(fits)
    one_sequence = one_sequence_blocks * request.block_bytes
    room = profile.limit_bytes - profile.in_use_bytes - profile.graph_bytes - one_sequence
    # Activations scale with the rows sampled and the tokens computed (fewer of either also
    # shrinks the graphs), not quite in proportion: what would bring the larger part under the
    # room left, with some to spare.
    usable = room * (100 - SPARE_PERCENT) // 100
    if profile.forward_bytes < usable < profile.sampler_bytes:
        fits.append(f"--max-num-seqs {usable * request.max_num_seqs // profile.sampler_bytes}")
    if profile.sampler_bytes < usable < profile.forward_bytes:
        tokens = usable * request.max_num_batched_tokens // profile.forward_bytes
        fits.append(f"--max-num-batched-tokens {tokens}")
    if profile.graph_bytes and room + profile.graph_bytes >= profile.activation_bytes:
        fits.append("--enforce-eager (no CUDA graphs)")
    if request.on_cuda:
        fits.append(f"a --gpu-memory-utilization over {request.gpu_memory_utilization}")
    elif request.kv_cache_memory_gb is not None:
        fits.append(f"--kv-cache-memory-gb {one_sequence / GIB:.3f} or more")
    return ", or ".join(fits)
