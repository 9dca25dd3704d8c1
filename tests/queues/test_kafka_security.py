"""KafkaJobSource and its transactional settlement, and the producer over SASL (PLAIN, SCRAM)
and TLS against a real broker (tests/secure_brokers.py), and the start-up errors for a wrong
password, a missing client certificate and an untrusted broker certificate."""

from pathlib import Path
from typing import Any

import pytest

from llm_worker.client import KafkaProducer
from llm_worker.queues.errors import BrokerAuthError, BrokerTLSError
from llm_worker.queues.kafka import KafkaJobSource
from llm_worker.queues.kafka_conn import client_kwargs
from llm_worker.queues.kafka_results import KafkaResultSink
from llm_worker.queues.protocol import Outcome
from llm_worker.schemas import Job, JobStatus, Result
from llm_worker.service_settings import KafkaSettings
from tests.kafka_read import committed_offsets, read_topic
from tests.secure_brokers import SASL_PASSWORD, SASL_USER, SecureKafka

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(120)]


def _settings(kafka: SecureKafka, name: str, case: str, **overrides: Any) -> KafkaSettings:
    """Settings for one listener: `case` is PROTOCOL or PROTOCOL/MECHANISM."""
    protocol, _, mechanism = case.partition("/")
    bootstrap = {"SASL_PLAINTEXT": kafka.sasl_plaintext, "SSL": kafka.ssl,
                 "SASL_SSL": kafka.sasl_ssl}[protocol]
    security: dict[str, Any] = {"security_protocol": protocol}
    if mechanism:
        security |= {"sasl_mechanism": mechanism, "sasl_username": SASL_USER,
                     "sasl_password": SASL_PASSWORD}
    if protocol.endswith("SSL"):
        security["ssl_cafile"] = str(kafka.certs / "ca.crt")
    if protocol == "SSL":  # this listener requires a client certificate
        security |= {"ssl_certfile": str(kafka.certs / "client.crt"),
                     "ssl_keyfile": str(kafka.certs / "client.key")}
    return KafkaSettings(
        bootstrap_servers=bootstrap, jobs_topic=f"{name}.jobs", results_topic=f"{name}.results",
        dead_letter_topic=f"{name}.dead", group_id=f"{name}-group", num_partitions=1,
        session_timeout_ms=6000, heartbeat_interval_ms=1000, **(security | overrides),
    )


@pytest.mark.parametrize("case", [
    "SASL_PLAINTEXT/PLAIN", "SASL_PLAINTEXT/SCRAM-SHA-256", "SSL", "SASL_SSL/SCRAM-SHA-512",
])
async def test_job_in_result_out_and_commit(
    secure_kafka: SecureKafka, unique_name: str, case: str
) -> None:
    settings = _settings(secure_kafka, unique_name, case)
    async with KafkaProducer(settings) as producer:
        await producer.enqueue_many([Job(id="j1", prompt="secured")])
    source = KafkaJobSource(settings, "w1")
    sink = KafkaResultSink(settings, mirror=None)
    await source.start()
    await sink.start()
    try:
        got: list = []
        for _ in range(100):
            got += await source.receive(10, 0.2)
            if got:
                break
        [delivery] = got
        assert Job.model_validate_json(delivery.payload).prompt == "secured"
        result = Result(id="j1", status=JobStatus.COMPLETED, text="ok")
        await source.settlement(sink).commit([Outcome([delivery], result)])
    finally:
        await source.close()
        await sink.close()
    # Checked through the broker's PLAINTEXT listener: what the secured clients wrote is there.
    [published] = await read_topic(secure_kafka.plaintext, settings.results_topic, 1)
    assert published.key == b"j1"
    assert Result.model_validate_json(published.value).text == "ok"
    assert sum((await committed_offsets(secure_kafka.plaintext, settings.group_id)).values()) == 1


@pytest.mark.parametrize("case", ["SASL_PLAINTEXT/PLAIN", "SASL_SSL/SCRAM-SHA-256"])
async def test_wrong_sasl_password_fails_start_clearly(
    secure_kafka: SecureKafka, unique_name: str, case: str
) -> None:
    settings = _settings(secure_kafka, unique_name, case, sasl_password="not-the-password")
    match = f"rejected the credentials of user '{SASL_USER}'"
    source = KafkaJobSource(settings, "w1")
    with pytest.raises(BrokerAuthError, match=match):
        await source.start()
    await source.close()
    sink = KafkaResultSink(settings, mirror=None)
    with pytest.raises(BrokerAuthError, match=match):
        await sink.start()
    await sink.close()


async def test_missing_client_certificate_fails_start_clearly(
    secure_kafka: SecureKafka, unique_name: str
) -> None:
    settings = _settings(secure_kafka, unique_name, "SSL", ssl_certfile=None, ssl_keyfile=None)
    source = KafkaJobSource(settings, "w1")
    with pytest.raises(BrokerTLSError, match="ssl_certfile"):
        await source.start()
    await source.close()


async def test_untrusted_broker_certificate_fails_start_clearly(
    secure_kafka: SecureKafka, other_ca_certs: Path, unique_name: str
) -> None:
    settings = _settings(secure_kafka, unique_name, "SASL_SSL/PLAIN",
                         ssl_cafile=str(other_ca_certs / "ca.crt"))
    with pytest.raises(BrokerTLSError, match="certificate verification failed"):
        async with KafkaProducer(settings):
            pass


def test_unreadable_tls_file_is_named(tmp_path: Path) -> None:
    settings = KafkaSettings(security_protocol="SSL", ssl_cafile=str(tmp_path / "no-such-ca.crt"))
    with pytest.raises(BrokerTLSError, match=r"no-such-ca\.crt"):
        client_kwargs(settings)
