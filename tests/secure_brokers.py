"""Brokers that speak TLS and SASL, for the security tests: throwaway certificates from
scripts/make_tls_certs.sh, TLS-only redis-servers on their own ports, and one Kafka broker per
session with SASL_PLAINTEXT, SSL (client certificates required) and SASL_SSL listeners, so the
shared PLAINTEXT test broker is never restarted or reconfigured."""

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.brokers import KAFKA_PORT, SCRIPTS_DIR, run_script, unavailable

SASL_USER = "alice"
SASL_PASSWORD = "alice-secret"
_SECURE_KAFKA_PORT = KAFKA_PORT + 100  # its controller takes the next port
TLS_REDIS_PORT = 16990  # below the OS's ephemeral range, where private_redis ports come from
MTLS_REDIS_PORT = 16991


def _make_certs(folder: Path) -> Path:
    try:
        subprocess.run(["bash", str(SCRIPTS_DIR / "make_tls_certs.sh"), str(folder)],
                       check=True, capture_output=True, timeout=60)
    except (subprocess.CalledProcessError, OSError) as exc:
        unavailable("openssl (test certificates)", exc)
    return folder


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.crt, server.crt/.key (localhost, 127.0.0.1) and client.crt/.key signed by that CA."""
    return _make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def other_ca_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same set from an unrelated CA: trusted by nobody here."""
    return _make_certs(tmp_path_factory.mktemp("other-tls"))


@dataclass(frozen=True)
class TlsRedis:
    url: str  # rediss://127.0.0.1:PORT/0
    env: dict[str, str]  # what start_redis.sh needs to stop it


def start_tls_redis(port: int, certs: Path, require_client_certs: bool) -> TlsRedis:
    """A TLS-only redis-server on its own port and a fresh data dir (one left running there by
    an interrupted run is stopped first: start_redis.sh would reuse it whatever its settings)."""
    env = {"REDIS_PORT": str(port), "REDIS_DATA_DIR": f"/tmp/llm-worker-redis-tls-{port}",
           "REDIS_TLS_DIR": str(certs),
           "REDIS_TLS_AUTH_CLIENTS": "yes" if require_client_certs else "no"}
    try:
        run_script("start_redis.sh", "stop", env=env)
        shutil.rmtree(env["REDIS_DATA_DIR"], ignore_errors=True)
        return TlsRedis(run_script("start_redis.sh", env=env), env)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        unavailable("redis-server with TLS", exc)
        raise


def stop_tls_redis(server: TlsRedis) -> None:
    run_script("start_redis.sh", "stop", env=server.env)
    shutil.rmtree(server.env["REDIS_DATA_DIR"], ignore_errors=True)


@dataclass(frozen=True)
class SecureKafka:
    plaintext: str  # bootstrap addresses, one per listener
    sasl_plaintext: str
    ssl: str  # requires a client certificate
    sasl_ssl: str
    certs: Path


@pytest.fixture(scope="session")
def secure_kafka(tls_certs: Path) -> Iterator[SecureKafka]:
    port = _SECURE_KAFKA_PORT
    env = {
        "KAFKA_PORT": str(port), "KAFKA_DATA_DIR": f"/tmp/llm-worker-kafka-secure-{port}",
        "KAFKA_SASL_PORT": str(port + 2), "KAFKA_SSL_PORT": str(port + 3),
        "KAFKA_SASL_SSL_PORT": str(port + 4), "KAFKA_TLS_DIR": str(tls_certs),
        "KAFKA_SSL_CLIENT_AUTH": "required", "KAFKA_SASL_USERS": f"{SASL_USER}:{SASL_PASSWORD}",
    }
    # SCRAM users are written when the data dir is formatted: always start from a fresh one.
    run_script("start_kafka.sh", "stop", env=env)
    shutil.rmtree(env["KAFKA_DATA_DIR"], ignore_errors=True)
    try:
        plaintext = run_script("start_kafka.sh", env=env)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        unavailable("Kafka with SASL and SSL listeners", exc)
        raise
    yield SecureKafka(plaintext, f"127.0.0.1:{port + 2}", f"127.0.0.1:{port + 3}",
                      f"127.0.0.1:{port + 4}", tls_certs)
    run_script("start_kafka.sh", "stop", env=env)
    shutil.rmtree(env["KAFKA_DATA_DIR"], ignore_errors=True)
