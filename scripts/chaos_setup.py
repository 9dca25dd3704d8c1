"""What scripts/kill_trials.py and scripts/poison_corpus.py share: broker arguments, one
fresh namespace (Redis prefix or Kafka topics and group) per run, the workers' environment, and
putting raw messages on the queue."""

import argparse
import uuid
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from scale_fleet import FleetSpec

from llm_worker.queues.kafka_conn import client_kwargs, ensure_topics
from llm_worker.queues.keys import RedisKeys
from llm_worker.service_settings import KafkaSettings, RedisSettings


def add_broker_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queue", choices=["redis", "kafka"], default="redis")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0",
                   help="results and statuses (and, for Kafka, the mirror and cancel flags)")
    p.add_argument("--kafka-bootstrap-servers", default="127.0.0.1:9092")
    p.add_argument("--partitions", type=int, default=6, help="Kafka: jobs topic partitions")
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--load-format", choices=["auto", "dummy"], default="dummy")
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--max-in-flight", type=int, default=32)
    p.add_argument("--log-dir", type=Path, default=Path("/tmp/llm-worker-chaos"))


@dataclass(frozen=True)
class Namespace:
    """One run's own keys and topics, so runs never see each other's messages."""

    queue: str
    redis: RedisSettings
    kafka: KafkaSettings

    @classmethod
    def fresh(cls, args: argparse.Namespace, stem: str) -> "Namespace":
        name = f"{stem}{uuid.uuid4().hex[:8]}"
        kafka = KafkaSettings(
            bootstrap_servers=args.kafka_bootstrap_servers, jobs_topic=f"{name}.jobs",
            results_topic=f"{name}.results", dead_letter_topic=f"{name}.dead",
            group_id=f"{name}-workers", num_partitions=args.partitions,
            session_timeout_ms=6000, heartbeat_interval_ms=1000, mirror_results_to_redis=True)
        return cls(args.queue, RedisSettings(url=args.redis_url, prefix=name), kafka)

    def service_env(self, args: argparse.Namespace, **extra: str) -> dict[str, str]:
        k = self.kafka
        env = {
            "LLM_WORKER_QUEUE": self.queue, "LLM_WORKER_REDIS__URL": self.redis.url,
            "LLM_WORKER_REDIS__PREFIX": self.redis.prefix,
            "LLM_WORKER_MAX_IN_FLIGHT": str(args.max_in_flight),
            "LLM_WORKER_CLAIM_IDLE_MS": "2000", "LLM_WORKER_POLL_TIMEOUT_S": "0.1",
            "LLM_WORKER_KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers,
            "LLM_WORKER_KAFKA__JOBS_TOPIC": k.jobs_topic,
            "LLM_WORKER_KAFKA__RESULTS_TOPIC": k.results_topic,
            "LLM_WORKER_KAFKA__DEAD_LETTER_TOPIC": k.dead_letter_topic,
            "LLM_WORKER_KAFKA__GROUP_ID": k.group_id,
            "LLM_WORKER_KAFKA__NUM_PARTITIONS": str(k.num_partitions),
            "LLM_WORKER_KAFKA__SESSION_TIMEOUT_MS": str(k.session_timeout_ms),
            "LLM_WORKER_KAFKA__HEARTBEAT_INTERVAL_MS": str(k.heartbeat_interval_ms),
            "LLM_WORKER_KAFKA__MIRROR_RESULTS_TO_REDIS": "true",
        }
        return {**env, **extra}

    def fleet_spec(self, args: argparse.Namespace, log_dir: Path, **extra: str) -> FleetSpec:
        serve_args = ["--model", args.model, "--load-format", args.load_format,
                      "--max-num-seqs", str(args.max_num_seqs), "--device", "cpu",
                      "--kv-cache-memory-gb", "0.1"]
        return FleetSpec(self.service_env(args, **extra), serve_args, gpu_ids=None,
                         cpu_threads=1, log_dir=log_dir, shutdown_grace_s=10.0)

    async def put(self, messages: list[tuple[bytes | None, bytes | None, int | None]]) -> None:
        """Raw (key, payload, partition) messages, in order: Redis stream fields `id` (none
        for a None key) and `job` (none for a None payload); Kafka records keyed by the key
        (None: no key), on `partition` if given."""
        if self.queue == "redis":
            await self._put_redis(messages)
        else:
            await self._put_kafka(messages)

    async def _put_redis(self, messages: list[tuple[bytes | None, bytes | None, int | None]]
                         ) -> None:
        client = Redis.from_url(self.redis.url)
        stream = RedisKeys(self.redis.prefix).jobs_stream
        try:
            for start in range(0, len(messages), 500):
                async with client.pipeline(transaction=False) as pipe:
                    for key, payload, _ in messages[start:start + 500]:
                        fields = {"id": key, "job": payload}
                        pipe.xadd(stream, {name: value for name, value in fields.items()
                                           if value is not None} or {"nothing": b""})
                    await pipe.execute()
        finally:
            await client.aclose()

    async def _put_kafka(self, messages: list[tuple[bytes | None, bytes | None, int | None]]
                         ) -> None:
        await ensure_topics(self.kafka)
        producer = AIOKafkaProducer(**client_kwargs(self.kafka), enable_idempotence=True,
                                    acks="all", max_request_size=8 << 20)
        await producer.start()
        try:
            sent = [await producer.send(self.kafka.jobs_topic, payload, key=key,
                                        partition=partition)
                    for key, payload, partition in messages]
            for future in sent:
                await future
        finally:
            await producer.stop()
