"""What the engine reports when asked (metrics scrape it): counts and cache use, no state."""

from dataclasses import dataclass

from llm_worker.engine.block_manager import PrefixCacheStats
from llm_worker.engine.scheduler import Scheduler
from llm_worker.engine.speculative import SpecStats, Speculator


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    prefix_cache: PrefixCacheStats
    num_preemptions: int
    num_computed_tokens: int  # every token the model has run, prefill and decode
    num_steps: int
    spec: SpecStats | None = None  # None: speculative decoding is off


def engine_stats(
    scheduler: Scheduler, num_computed_tokens: int, num_steps: int, speculator: Speculator | None
) -> EngineStats:
    return EngineStats(
        num_running=scheduler.num_running,
        num_waiting=scheduler.num_waiting,
        kv_cache_usage=scheduler.block_manager.usage,
        prefix_cache=scheduler.block_manager.stats,
        num_preemptions=scheduler.num_preemptions,
        num_computed_tokens=num_computed_tokens,
        num_steps=num_steps,
        spec=speculator.snapshot() if speculator is not None else None,
    )
