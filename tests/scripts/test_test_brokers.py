"""scripts/test_brokers.sh, the broker lifecycle of scripts/test.sh: a test Redis starts empty
and takes its data directory with it, so a later start_redis.sh on that port serves nothing an
earlier run left. On a real redis-server, on a port of this test's own."""

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.brokers import unavailable

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture
def port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    yield free
    env = {**os.environ, "REDIS_PORT": str(free), "REDIS_DATA_DIR": _data_dir(free)}
    subprocess.run(["bash", str(SCRIPTS / "start_redis.sh"), "stop"], env=env, check=False,
                   capture_output=True, timeout=60)
    shutil.rmtree(_data_dir(free), ignore_errors=True)


def _data_dir(port: int) -> str:
    return f"/tmp/llm-worker-redis-{port}"


def _script(port: int, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "KAFKA_"))}
    env.update({"REDIS_PORT": str(port), "KAFKA_PORT": str(port + 1)})
    done = subprocess.run(["bash", str(SCRIPTS / args[0]), *args[1:]], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        unavailable(f"{args[0]} {' '.join(args[1:])}", RuntimeError(done.stderr.strip()))
    return done.stdout.strip()


def _dbsize(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.dbsize())
    finally:
        client.close()


def _write(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.set("left-behind", "1")
        client.bgrewriteaof()
    finally:
        client.close()


def test_a_test_redis_starts_empty_and_leaves_nothing(port: int) -> None:
    # An earlier, interrupted run: a server on the test port with data, its directory kept.
    url = _script(port, "start_redis.sh")
    _write(url)
    _script(port, "start_redis.sh", "stop")
    assert Path(_data_dir(port), "appendonlydir").is_dir()

    started = _script(port, "test_brokers.sh", "start", "redis")
    assert started == f"redis: {url}"
    assert _dbsize(url) == 0, "the test Redis starts empty"
    _write(url)

    _script(port, "test_brokers.sh", "stop")
    assert not Path(_data_dir(port)).exists()
    with pytest.raises(redis.ConnectionError):
        _dbsize(url)
    assert _script(port, "start_redis.sh") == url
    assert _dbsize(url) == 0, "a later start_redis.sh on the port reuses nothing"
