"""A real tiny engine with one injected fault, standing in for a job that kills its worker or
one the engine fails by itself, and a service loop that restarts a worker after each death."""

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

from llm_worker.config import EngineSettings
from llm_worker.engine.llm_engine import LLMEngine, RequestOutput
from llm_worker.queues.memory import MemoryBroker
from llm_worker.service import EngineCrashed, Service
from llm_worker.service_settings import ServiceSettings

TINY = EngineSettings(model="tiny-llama", load_format="dummy", device="cpu", dtype="float32",
                      max_num_seqs=8, kv_cache_memory_gb=0.05)  # type: ignore[arg-type]


def tiny_engine() -> LLMEngine:
    return LLMEngine.from_settings(TINY)


class DiesOn:
    """Every step that holds `fatal_id` raises as a device fault does: the engine thread dies,
    and with it the worker. Everything else is the real engine."""

    def __init__(self, engine: LLMEngine, fatal_id: str) -> None:
        self._engine = engine
        self._fatal_id = fatal_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def step(self) -> list[RequestOutput]:
        if self._fatal_id in self._engine.requests:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
        return self._engine.step()


class FailsRequest:
    """The engine reports `failing_id` as failed (finish reason internal_error), as an engine
    that contains a request-level fault does; the other requests run as usual."""

    def __init__(self, engine: LLMEngine, failing_id: str) -> None:
        self._engine = engine
        self._failing_id = failing_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def step(self) -> list[RequestOutput]:
        return [dataclasses.replace(out, finish_reason="internal_error", output_token_ids=[])
                if out.request_id == self._failing_id else out for out in self._engine.step()]


async def serve_until_settled(broker: MemoryBroker, make_engine: Callable[[], Any],
                              settings: ServiceSettings, num_messages: int,
                              max_lives: int = 10) -> int:
    """Run workers one after another, each on a fresh engine, until every message is acked;
    returns how many of them died (EngineCrashed)."""
    deaths = 0
    for _ in range(max_lives):
        service = Service(settings, broker.source(), broker.sink(), make_engine(), "tiny-llama")
        runner = asyncio.create_task(service.run())
        try:
            async with asyncio.timeout(120):
                while len(broker.acked) < num_messages and not runner.done():
                    await asyncio.sleep(0.02)
        finally:
            service.stop()
            try:
                await runner
            except EngineCrashed:
                deaths += 1
        if len(broker.acked) >= num_messages:
            return deaths
    raise AssertionError(f"not settled after {max_lives} workers: {len(broker.acked)} acked")
