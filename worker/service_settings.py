"""Service configuration, read once from the environment (prefix LLM_WORKER_ like the engine's
settings, nested with __).

Example: LLM_WORKER_QUEUE=redis LLM_WORKER_REDIS__URL=rediss://:pw@host:6380/0
"""

import os
import socket
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class RedisSettings(BaseModel):
    url: str = "redis://127.0.0.1:6379/0"  # rediss:// turns TLS on
    username: str | None = None  # ACL user; None: the default user
    password: SecretStr | None = None  # overrides any password in the URL
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: Literal["required", "optional", "none"] = "required"
    prefix: str = "llmw"  # every key lives under it; see worker/queues/keys.py
    socket_connect_timeout_s: float = 5.0
    # A reply that has not come after this long is treated as a dead connection: it is dropped and
    # the command retried on a fresh one (a half-open TCP connection would otherwise hang forever).
    socket_timeout_s: float = Field(default=5.0, gt=0.5)
    max_reconnect_backoff_s: float = 5.0


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    jobs_topic: str = "llmw.jobs"
    results_topic: str = "llmw.results"
    dead_letter_topic: str = "llmw.dead"
    group_id: str = "llmw-workers"
    num_partitions: int = Field(default=8, ge=1)  # used when the worker creates missing topics
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    session_timeout_ms: int = 10_000  # how soon a killed worker's partitions move on
    heartbeat_interval_ms: int = 3_000
    commit_interval_s: float = 0.5
    # Settled messages per partition whose ids stay bound to their content in the ledger (and
    # are read back when a worker takes the partition over); beyond it only the Redis mirror,
    # when there is one, still binds them.
    ledger_window: int = Field(default=10_000, ge=0)
    mirror_results_to_redis: bool = False  # also write results and statuses to Redis for polling


def _default_worker_id() -> str:
    # Stable across restarts on one host so a restarted worker replays its own pending entries.
    return os.environ.get("HOSTNAME") or socket.gethostname()


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LLM_WORKER_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    queue: Literal["redis", "kafka", "memory", "jsonl"] = "redis"  # jsonl: run-batch only
    worker_id: str = Field(default_factory=_default_worker_id)
    served_model: str | None = None  # name jobs may ask for; None: the engine's model name
    max_in_flight: int | None = Field(default=None, ge=1)  # None: 2x the engine's max_num_seqs
    max_job_bytes: int = Field(default=1 << 20, ge=64)
    max_json_depth: int = Field(default=32, ge=2)  # a job nests 4 deep; refused before parsing
    # A job whose worker died while it ran is run again alone; after this many deaths alone it
    # is dead-lettered (poison), and the jobs that were beside it are never blamed for it.
    max_solo_deaths: int = Field(default=3, ge=1)
    # Redis only (Kafka does not count deliveries): a backstop for deaths before a run starts.
    max_deliveries: int = Field(default=10, ge=1)
    claim_idle_ms: int = Field(default=60_000, ge=100)  # Redis: steal entries idle this long
    result_ttl_s: int = Field(default=7 * 24 * 3600, ge=1)
    results_stream_maxlen: int = Field(default=1_000_000, ge=1)
    trim_interval_s: float = 30.0
    poll_timeout_s: float = 0.5  # longest a receive waits; bounds shutdown and cancel latency
    watch_interval_s: float = 0.25  # cancel flags and deadlines of in-flight jobs
    shutdown_grace_s: float = 30.0
    metrics_port: int | None = Field(default=None, ge=0, le=65535)  # /metrics /healthz /readyz
    metrics_host: str = "0.0.0.0"
    lag_interval_s: float = 5.0  # how often the consumer-lag gauge asks the broker
    liveness_timeout_s: float = 30.0  # /healthz fails when the event loop has not ticked this long
    redis: RedisSettings = Field(default_factory=RedisSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
