"""Real brokers for the queue and service tests, started through the same scripts CI uses.

Locally a test that needs a broker that cannot be started is skipped with the reason; with CI
set it fails instead, so a missing broker never passes as green.
"""

import itertools
import os
import shutil
import socket
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


def free_port() -> int:
    """A loopback port nothing listens on now, as the OS picks one for bind(0) (Linux picks odd
    ones there and gives connect() even ones first). Someone may still take it before a server
    binds it: start_private_redis checks what it started."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_private_redis(
    data_dir: str, ports: Iterator[int], num_tries: int = 5
) -> tuple[str, dict[str, str]]:
    """A redis-server of our own on the first of `ports` where one starts: its URL and its env
    for start_redis.sh. start_redis.sh reuses a server that already answers on its port, so a
    port someone took meanwhile (another test run, a developer's server) would hand us theirs,
    and stopping or flushing it would disturb them: ours is the one whose pid is in our own
    data dir's pid file. A port taken by anything else fails to bind; both get another try."""
    errors = []
    for port in itertools.islice(ports, num_tries):
        env = {**redis_env(port), "REDIS_DATA_DIR": data_dir}
        try:
            url = run_script("start_redis.sh", env=env)
        except RuntimeError as exc:
            errors.append(f"port {port}: {exc}")
            continue
        if server_pid(url) == _pid_in(Path(data_dir) / "redis.pid"):
            return url, env
        errors.append(f"port {port}: a redis-server that is not ours answers there")
    raise RuntimeError(f"no redis-server of our own started in {num_tries} tries: {errors}")


def server_pid(url: str) -> int | None:
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        return int(client.info("server")["process_id"])
    except redis.RedisError:
        return None
    finally:
        client.close()


def _pid_in(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


@pytest.fixture
def private_redis(unique_name: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A redis-server of this test's own (restarts must not disturb others): its URL and the
    env that start_redis.sh needs to stop or restart it. A restart reuses the port: it is free
    again for the few seconds the server is down, so that window is not guarded."""
    ports = iter(free_port, None)  # a fresh port from the OS for each try
    data_dir = f"/tmp/llm-worker-redis-{unique_name}"
    try:
        url, env = start_private_redis(data_dir, ports)
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
