import pytest

from tests.brokers import anyio_backend, kafka_bootstrap, private_redis, redis_url, unique_name
from worker.config import EngineSettings
from worker.engine.llm_engine import LLMEngine

__all__ = ["anyio_backend", "kafka_bootstrap", "private_redis", "redis_url", "unique_name"]

# Small enough for 2 CPU cores, large enough that batches really mix jobs.
TEST_ENGINE_SETTINGS = EngineSettings(max_num_seqs=32, kv_cache_memory_gb=0.5)


@pytest.fixture(scope="session")
def engine() -> LLMEngine:
    """The bundled SmolLM2-135M, loaded once and shared (one service drives it at a time)."""
    return LLMEngine.from_settings(TEST_ENGINE_SETTINGS)
