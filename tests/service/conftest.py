import pytest

from llm_worker.engine.llm_engine import LLMEngine
from tests.brokers import anyio_backend, kafka_bootstrap, private_redis, redis_url, unique_name
from tests.service.jobs import ONE_TOKEN, TEST_ENGINE_SETTINGS, numbered_jobs

__all__ = ["anyio_backend", "kafka_bootstrap", "private_redis", "redis_url", "unique_name"]


@pytest.fixture(scope="session")
def engine() -> LLMEngine:
    """The bundled SmolLM2-135M, loaded once and shared (one service drives it at a time)."""
    return LLMEngine.from_settings(TEST_ENGINE_SETTINGS)


@pytest.fixture(scope="session")
def expected_outputs(engine: LLMEngine) -> dict[str, list[int]]:
    """Prompt -> output token ids of the engine's own generate() for the 200-job runs."""
    jobs = numbered_jobs(200, params=ONE_TOKEN)
    outputs = engine.generate([job.prompt for job in jobs], ONE_TOKEN)
    return {job.prompt: out.output_token_ids for job, out in zip(jobs, outputs, strict=True)}
