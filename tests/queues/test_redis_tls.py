"""Redis over TLS (rediss://) against a real TLS-only redis-server: the round trip, mutual TLS,
and the start-up errors for an untrusted server, a missing client certificate, a plain URL and
unreadable certificate files."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_worker.client import RedisProducer
from llm_worker.queues.errors import BrokerTLSError, BrokerUnavailable
from llm_worker.queues.redis_results import RedisResultStore
from llm_worker.queues.redis_streams import RedisSourceConfig, RedisStreamSource
from llm_worker.schemas import Job, JobStatus, Result
from llm_worker.service_settings import RedisSettings
from tests.secure_brokers import (
    MTLS_REDIS_PORT,
    TLS_REDIS_PORT,
    TlsRedis,
    start_tls_redis,
    stop_tls_redis,
)

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(60)]


# One server of each kind for the module (tests keep apart by key prefix): stopping a
# redis-server takes seconds, more than these tests themselves.
@pytest.fixture(scope="module")
def tls_redis(tls_certs: Path) -> Iterator[TlsRedis]:
    server = start_tls_redis(TLS_REDIS_PORT, tls_certs, require_client_certs=False)
    yield server
    stop_tls_redis(server)


@pytest.fixture(scope="module")
def mtls_redis(tls_certs: Path) -> Iterator[TlsRedis]:
    server = start_tls_redis(MTLS_REDIS_PORT, tls_certs, require_client_certs=True)
    yield server
    stop_tls_redis(server)


def _client_cert(certs: Path) -> dict[str, str]:
    return {"ssl_certfile": str(certs / "client.crt"), "ssl_keyfile": str(certs / "client.key")}


async def _round_trip(settings: RedisSettings) -> None:
    """Enqueue, receive and ack through the stream source, publish and read back the result."""
    async with RedisProducer(settings) as producer:
        await producer.enqueue_many([Job(id="j1", prompt="over TLS")])
        source = RedisStreamSource(settings, RedisSourceConfig("w1", 60_000, 3600.0))
        store = RedisResultStore(settings, ttl_s=60, results_stream_maxlen=100)
        await source.start()
        await store.start()
        try:
            [delivery] = await source.receive(10, 0.2)
            assert Job.model_validate_json(delivery.payload).prompt == "over TLS"
            assert await store.publish(Result(id="j1", status=JobStatus.COMPLETED, text="ok"))
            await source.ack(delivery)
            assert await source.receive(10, 0.05) == []
        finally:
            await source.close()
            await store.close()
        assert (await producer.result("j1")).text == "ok"  # type: ignore[union-attr]
        assert await producer.status("j1") == JobStatus.COMPLETED


async def test_round_trip_over_tls_with_ca_verification(
    tls_redis: TlsRedis, tls_certs: Path, unique_name: str
) -> None:
    assert tls_redis.url.startswith("rediss://")
    await _round_trip(RedisSettings(
        url=tls_redis.url, prefix=unique_name, ssl_ca_certs=str(tls_certs / "ca.crt")
    ))


async def test_untrusted_server_certificate_fails_start(
    tls_redis: TlsRedis, other_ca_certs: Path
) -> None:
    wrong_ca = str(other_ca_certs / "ca.crt")
    source = RedisStreamSource(RedisSettings(url=tls_redis.url, ssl_ca_certs=wrong_ca),
                               RedisSourceConfig("w1", 60_000, 3600.0))
    with pytest.raises(BrokerTLSError, match="TLS certificate verification failed against") as err:
        await source.start()
    assert wrong_ca in str(err.value)
    await source.close()


async def test_plain_url_to_a_tls_port_names_rediss(tls_redis: TlsRedis) -> None:
    plain = RedisSettings(url=tls_redis.url.replace("rediss://", "redis://"))
    with pytest.raises(BrokerUnavailable, match="rediss://"):
        async with RedisProducer(plain):
            pass


async def test_mutual_tls_round_trip(
    mtls_redis: TlsRedis, tls_certs: Path, unique_name: str
) -> None:
    await _round_trip(RedisSettings(
        url=mtls_redis.url, prefix=unique_name, ssl_ca_certs=str(tls_certs / "ca.crt"),
        **_client_cert(tls_certs),
    ))


@pytest.mark.parametrize("client_cert", ["none", "other CA"])
async def test_server_requiring_client_certs_refuses_ours_at_start(
    mtls_redis: TlsRedis, tls_certs: Path, other_ca_certs: Path, client_cert: str
) -> None:
    settings = RedisSettings(url=mtls_redis.url, ssl_ca_certs=str(tls_certs / "ca.crt"),
                             **(_client_cert(other_ca_certs) if client_cert == "other CA" else {}))
    store = RedisResultStore(settings, ttl_s=60, results_stream_maxlen=100)
    with pytest.raises(BrokerTLSError, match="ssl_certfile"):
        await store.start()
    await store.close()


async def test_missing_ca_file_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-ca.crt")
    settings = RedisSettings(url="rediss://127.0.0.1:1/0", ssl_ca_certs=missing)
    with pytest.raises(BrokerTLSError, match=r"no-such-ca\.crt"):
        async with RedisProducer(settings):
            pass
