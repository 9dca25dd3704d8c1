"""Real brokers for the queue and service tests, started through the same scripts CI uses.

Locally a test that needs a broker that cannot be started is skipped with the reason; with CI
set it fails instead, so a missing broker never passes as green.
"""

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from llm_worker.service_settings import KafkaSettings

SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "scripts"
REDIS_PORT = int(os.environ.get("LLMW_TEST_REDIS_PORT", "16379"))
KAFKA_PORT = int(os.environ.get("LLMW_TEST_KAFKA_PORT", "19092"))


def run_script(name: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run a broker script; returns its stdout (the address); raises with its stderr."""
    done = subprocess.run(
        ["bash", str(SCRIPTS_DIR / name), *args],
        env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name} {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def unavailable(what: str, exc: Exception) -> None:
    message = f"{what} could not be started: {exc}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def redis_env(port: int, password: str | None = None) -> dict[str, str]:
    env = {"REDIS_PORT": str(port)}
    if password is not None:
        env["REDIS_PASSWORD"] = password
    return env


def kafka_env() -> dict[str, str]:
    return {"KAFKA_PORT": str(KAFKA_PORT)}


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        return run_script("start_redis.sh", env=redis_env(REDIS_PORT))
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        unavailable("redis-server", exc)
        raise


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    try:
        return run_script("start_kafka.sh", env=kafka_env())
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        unavailable("Kafka", exc)
        raise


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh key prefix / topic stem so tests sharing one broker never see each other's data.
    Keys under it on the shared test Redis are deleted afterwards so the server stays small."""
    name = f"t{uuid.uuid4().hex[:12]}"
    url = request.getfixturevalue("redis_url") if "redis_url" in request.fixturenames else None
    yield name
    if url is not None:
        _delete_keys(url, name)


def _delete_keys(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        batch = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) == 1000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    except redis.RedisError:
        pass  # a test that stopped the server leaves nothing to clean
    finally:
        client.close()


@pytest.fixture
def private_redis(unique_name: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A redis-server of this test's own (restarts must not disturb others): its URL and the
    env that start_redis.sh needs to stop or restart it."""
    port = 16400 + int(unique_name[1:5], 16) % 500
    env = {**redis_env(port), "REDIS_DATA_DIR": f"/tmp/llm-worker-redis-{unique_name}"}
    try:
        url = run_script("start_redis.sh", env=env)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        unavailable("redis-server", exc)
        raise
    yield url, env
    run_script("start_redis.sh", "stop", env=env)
    shutil.rmtree(env["REDIS_DATA_DIR"], ignore_errors=True)  # a unique name: never reused


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio (the worker's loop) through anyio's pytest plugin."""
    return "asyncio"


def topic_settings(bootstrap: str, name: str, num_partitions: int) -> KafkaSettings:
    """Kafka settings of a test's own: topics and group under `name`, fast rebalances."""
    return KafkaSettings(
        bootstrap_servers=bootstrap, jobs_topic=f"{name}.jobs", results_topic=f"{name}.results",
        dead_letter_topic=f"{name}.dead", group_id=f"{name}-group",
        num_partitions=num_partitions, session_timeout_ms=6000, heartbeat_interval_ms=1000,
    )
