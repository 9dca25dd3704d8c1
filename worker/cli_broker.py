"""Reaching the brokers from the CLI before any work: an unreachable one is one line that names
it, its address, the reason, and how to start one or point at another."""

import os
import socket
from dataclasses import dataclass

from llm_worker.cli_errors import CliError
from llm_worker.queues import kafka_conn, redis_conn
from llm_worker.queues.errors import BrokerUnavailable, error_behind
from llm_worker.service_settings import KafkaSettings, RedisSettings, ServiceSettings


@dataclass(frozen=True)
class Broker:
    name: str
    start_script: str
    env_var: str
    flag: str


REDIS = Broker("Redis", "scripts/start_redis.sh", "LLM_WORKER_REDIS__URL", "--redis-url")
KAFKA = Broker(
    "Kafka",
    "scripts/start_kafka.sh",
    "LLM_WORKER_KAFKA__BOOTSTRAP_SERVERS",
    "--kafka-bootstrap-servers",
)


class BrokerUnreachable(CliError):
    def __init__(self, broker: Broker, address: str, cause: BrokerUnavailable) -> None:
        super().__init__(
            f"cannot reach {broker.name} at {address}: {_reason(cause)}; start one with "
            f"{broker.start_script} or set {broker.env_var} ({broker.flag})"
        )


def _reason(exc: BrokerUnavailable) -> str:
    """Short words for nothing being there; the broker layer's whole message otherwise (it may
    carry a hint, e.g. that a TLS-only Redis needs rediss://)."""
    cause = error_behind(exc, OSError)
    if isinstance(cause, ConnectionRefusedError):
        return os.strerror(cause.errno or 111).lower()
    if isinstance(cause, socket.gaierror):
        return f"unknown host ({cause.strerror})"
    if isinstance(cause, TimeoutError):
        return "timed out"
    return str(exc)


async def reach_redis(settings: RedisSettings, num_retries: int) -> None:
    """PING Redis (credentials and TLS included); BrokerUnreachable when nothing answers after
    `num_retries` reconnects. BrokerAuthError passes through: a refusal is not an absence."""
    client = redis_conn.make_client(settings, num_retries)
    try:
        await redis_conn.verify(client, settings)
    except BrokerUnavailable as exc:
        raise BrokerUnreachable(REDIS, redis_conn.redis_address(settings), exc) from exc
    finally:
        await client.aclose()


async def reach_kafka(settings: KafkaSettings) -> None:
    try:
        await kafka_conn.verify(settings)
    except BrokerUnavailable as exc:
        raise BrokerUnreachable(KAFKA, settings.bootstrap_servers, exc) from exc


async def reach_queue(settings: ServiceSettings, num_redis_retries: int) -> None:
    """Every broker a worker with these settings talks to."""
    if settings.queue == "kafka":
        await reach_kafka(settings.kafka)
    if settings.queue == "redis" or (
        settings.queue == "kafka" and settings.kafka.mirror_results_to_redis
    ):
        await reach_redis(settings.redis, num_redis_retries)
