"""Build the JobSource and ResultSink a ServiceSettings names."""

from aiokafka.errors import KafkaError, KafkaTimeoutError

from llm_worker.queues.errors import BrokerUnavailable
from llm_worker.queues.kafka import KafkaJobSource
from llm_worker.queues.kafka_results import KafkaResultSink
from llm_worker.queues.memory import MemoryBroker
from llm_worker.queues.protocol import JobSource, ResultSink
from llm_worker.queues.redis_conn import TRANSIENT_ERRORS as REDIS_TRANSIENT_ERRORS
from llm_worker.queues.redis_results import RedisResultStore
from llm_worker.queues.redis_streams import RedisSourceConfig, RedisStreamSource
from llm_worker.service_settings import ServiceSettings

# What the service retries with backoff instead of failing: a broker restarting or unreachable.
TRANSIENT_BROKER_ERRORS: tuple[type[Exception], ...] = (
    *REDIS_TRANSIENT_ERRORS, KafkaError, BrokerUnavailable, ConnectionError,
)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying as it is: a connection or leadership problem, not a refusal of this
    message (e.g. a result over the broker's message size limit)."""
    if isinstance(exc, KafkaError):
        return bool(exc.retriable) or isinstance(exc, KafkaTimeoutError)
    return isinstance(exc, TRANSIENT_BROKER_ERRORS)


def _redis_store(settings: ServiceSettings) -> RedisResultStore:
    return RedisResultStore(settings.redis, settings.result_ttl_s, settings.results_stream_maxlen)


def build_queue(
    settings: ServiceSettings, memory: MemoryBroker | None = None
) -> tuple[JobSource, ResultSink]:
    if settings.queue == "redis":
        source = RedisStreamSource(settings.redis, RedisSourceConfig(
            consumer=settings.worker_id, claim_idle_ms=settings.claim_idle_ms,
            trim_interval_s=settings.trim_interval_s, id_binding_ttl_s=settings.result_ttl_s,
        ))
        return source, _redis_store(settings)
    if settings.queue == "kafka":
        mirror = _redis_store(settings) if settings.kafka.mirror_results_to_redis else None
        return (KafkaJobSource(settings.kafka, settings.worker_id),
                KafkaResultSink(settings.kafka, mirror))
    if settings.queue == "jsonl":
        raise ValueError("queue 'jsonl' is run-batch's: `llm-worker run-batch -i IN -o OUT`")
    if memory is None:
        raise ValueError("queue 'memory' runs in-process: pass the MemoryBroker to share")
    return memory.source(), memory.sink()
