"""KafkaSettings -> aiokafka keyword arguments (security passthrough), a start-up check that
names what is wrong, and topic creation."""

import asyncio
import contextlib
import ssl

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    BrokerResponseError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
)
from aiokafka.helpers import create_ssl_context

from llm_worker.queues.errors import (
    BrokerAuthError,
    BrokerTLSError,
    BrokerUnavailable,
    QueueError,
    error_behind,
    tls_failure,
)
from llm_worker.service_settings import KafkaSettings

_PROBE_TIMEOUT_MS = 10_000


def client_kwargs(settings: KafkaSettings) -> dict[str, object]:
    """Connection and security options shared by consumer, producer and admin client."""
    kwargs: dict[str, object] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = _ssl_context(settings)
    if settings.security_protocol.startswith("SASL"):
        if settings.sasl_mechanism is None or settings.sasl_username is None:
            raise ValueError("SASL needs kafka.sasl_mechanism and kafka.sasl_username")
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            kwargs["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return kwargs


def _ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    try:
        return create_ssl_context(
            cafile=settings.ssl_cafile, certfile=settings.ssl_certfile, keyfile=settings.ssl_keyfile
        )
    except (OSError, ssl.SSLError) as exc:  # a missing file comes without its name
        raise BrokerTLSError(
            f"cannot load the Kafka TLS files (kafka.ssl_cafile={settings.ssl_cafile!r}, "
            f"ssl_certfile={settings.ssl_certfile!r}, ssl_keyfile={settings.ssl_keyfile!r}): {exc}"
        ) from exc


async def verify(settings: KafkaSettings) -> None:
    """Open one connection (TLS and SASL included) to a bootstrap server so bad credentials or
    certificates fail start-up with the reason: aiokafka's own clients log it and raise only
    "Unable to bootstrap"."""
    kwargs = client_kwargs(settings)
    connect_kwargs = {name: value for name, value in kwargs.items() if name != "bootstrap_servers"}
    failure: BaseException | None = None
    for host, port, _ in collect_hosts(settings.bootstrap_servers):
        address = f"{host}:{port}"
        try:
            conn = await create_conn(
                host, port, request_timeout_ms=_PROBE_TIMEOUT_MS, **connect_kwargs
            )
        except (OSError, KafkaConnectionError) as exc:  # TimeoutError is an OSError
            if _is_tls_failure(exc, settings):
                # aiokafka reports a TLS alert after the handshake as "Connection closed"
                reason = error_behind(exc, ssl.SSLError) or exc
                raise tls_failure(
                    f"Kafka at {address}", reason, settings.ssl_cafile, "kafka.ssl_cafile"
                ) from exc
            failure = exc
            continue
        except BrokerResponseError as exc:  # refused during the SASL handshake
            raise _sasl_failure(exc, settings, address) from exc
        conn.close()
        return
    raise BrokerUnavailable(
        f"Kafka at {settings.bootstrap_servers} is not reachable: {failure!r}"
    ) from failure


def _is_tls_failure(exc: BaseException, settings: KafkaSettings) -> bool:
    if isinstance(exc, ssl.SSLError):
        return True
    # With TLS 1.3 the broker judges our certificate after the handshake and just closes.
    return settings.security_protocol in ("SSL", "SASL_SSL") and isinstance(
        exc, (KafkaConnectionError, ConnectionResetError)
    )


def _sasl_failure(
    exc: BrokerResponseError, settings: KafkaSettings, address: str
) -> BrokerAuthError:
    who = f"user {settings.sasl_username!r} with SASL {settings.sasl_mechanism}"
    if isinstance(exc, SaslAuthenticationFailed):
        return BrokerAuthError(f"Kafka at {address} rejected the credentials of {who}: {exc}")
    return BrokerAuthError(
        f"Kafka at {address} refused the SASL handshake of {who}: {exc!r}. Is it a "
        f"{settings.security_protocol} listener with {settings.sasl_mechanism} enabled?"
    )


async def ensure_topics(settings: KafkaSettings) -> None:
    """Create the jobs, results and dead-letter topics if missing, so the jobs topic gets
    `num_partitions` (partitions bound how many workers share the work) rather than a broker
    default from auto-creation. Checks the connection first (`verify`), so every start-up path
    through here fails on bad credentials with the reason."""
    await verify(settings)
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, num_partitions=settings.num_partitions, replication_factor=1)
            for name in (settings.jobs_topic, settings.results_topic, settings.dead_letter_topic)
            if name not in existing
        ]
        if wanted:
            # another worker may have created them first
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(wanted)
    finally:
        await admin.close()


# Compaction keeps a ledger partition to its live records; small segments let it compact soon.
_LEDGER_CONFIGS = {
    "cleanup.policy": "compact",
    "segment.ms": "60000",
    "min.cleanable.dirty.ratio": "0.1",
    "delete.retention.ms": "60000",
}


async def ensure_ledger_topic(settings: KafkaSettings) -> int:
    """Create the jobs topic's ledger (worker/queues/kafka_ledger.py) with the jobs topic's
    partition count if missing; returns that count. A ledger with another count cannot pair
    its partitions with the jobs topic's, and stops start-up with the reason."""
    ledger = f"{settings.jobs_topic}.ledger"
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        num_partitions = await _partition_count(admin, settings.jobs_topic)
        if ledger not in set(await admin.list_topics()):
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(
                    ledger, num_partitions=num_partitions, replication_factor=1,
                    topic_configs=_LEDGER_CONFIGS)])
        num_ledger = await _partition_count(admin, ledger)
        if num_ledger != num_partitions:
            raise QueueError(
                f"the ledger topic {ledger} has {num_ledger} partitions and "
                f"{settings.jobs_topic} {num_partitions}; they must match (recreate the ledger "
                "with the jobs topic's count after adding partitions)")
        return num_partitions
    finally:
        await admin.close()


async def _partition_count(admin: AIOKafkaAdminClient, topic: str) -> int:
    for _ in range(100):  # a topic just created takes a moment to show in the metadata
        if topic in set(await admin.list_topics()):
            [described] = await admin.describe_topics([topic])
            if described["partitions"]:
                return len(described["partitions"])
        await asyncio.sleep(0.1)
    raise BrokerUnavailable(f"topic {topic} does not show in Kafka's metadata")
