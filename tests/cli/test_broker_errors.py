"""An unreachable broker is one line on stderr and a non-zero exit, never a traceback; and the
worker's defaults, the start scripts and the README agree on the ports."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from llm_worker.service_settings import KafkaSettings, RedisSettings

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLM_WORKER_")}
    return subprocess.run(
        [sys.executable, "-m", "llm_worker", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


REDIS_HINT = "start one with scripts/start_redis.sh or set LLM_WORKER_REDIS__URL (--redis-url)"
KAFKA_HINT = (
    "start one with scripts/start_kafka.sh or set LLM_WORKER_KAFKA__BOOTSTRAP_SERVERS "
    "(--kafka-bootstrap-servers)"
)


@pytest.mark.parametrize(
    "command",
    [["enqueue", "--prompt", "hi"], ["enqueue", "--prompt", "hi", "--wait"], ["result", "x1"]],
)
def test_redis_unreachable_from_enqueue_and_result(command: list[str]) -> None:
    port = _closed_port()
    done = _cli(*command, "--redis-url", f"redis://127.0.0.1:{port}/0")
    assert done.returncode == 2 and done.stdout == ""
    assert _one_line(done) == (
        f"llm-worker {command[0]}: error: cannot reach Redis at 127.0.0.1:{port}: "
        f"connection refused; {REDIS_HINT}"
    )


def test_an_unknown_redis_host_is_named() -> None:
    done = _cli("result", "x1", env={"LLM_WORKER_REDIS__URL": "redis://no-such-host.invalid/0"})
    assert done.returncode == 2
    line = _one_line(done)
    assert line.startswith("llm-worker result: error: cannot reach Redis at no-such-host.invalid")
    assert "unknown host" in line and line.endswith(REDIS_HINT)


def test_kafka_unreachable_from_enqueue() -> None:
    port = _closed_port()
    done = _cli("enqueue", "--prompt", "hi", "--queue", "kafka",
                "--kafka-bootstrap-servers", f"127.0.0.1:{port}")
    assert done.returncode == 2 and done.stdout == ""
    assert _one_line(done) == (
        f"llm-worker enqueue: error: cannot reach Kafka at 127.0.0.1:{port}: connection refused; "
        f"{KAFKA_HINT}"
    )


@pytest.mark.parametrize("queue", ["redis", "kafka"])
def test_serve_says_so_before_loading_a_model(queue: str) -> None:
    port = _closed_port()
    env = {
        "LLM_WORKER_QUEUE": queue,
        "LLM_WORKER_REDIS__URL": f"redis://127.0.0.1:{port}/0",
        "LLM_WORKER_REDIS__MAX_RECONNECT_BACKOFF_S": "0.01",  # serve waits for a starting Redis
        "LLM_WORKER_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
    }
    done = _cli("--log-level", "WARNING", "serve", "--model", "no-such-model", env=env)
    name, hint = ("Redis", REDIS_HINT) if queue == "redis" else ("Kafka", KAFKA_HINT)
    assert done.returncode == 2
    assert _one_line(done) == (
        f"llm-worker serve: error: cannot reach {name} at 127.0.0.1:{port}: connection refused; "
        f"{hint}"
    )


def _script_default_port(script: str, variable: str) -> int:
    text = (REPO / "scripts" / script).read_text()
    found = re.search(rf'port="\$\{{{variable}:-(\d+)\}}"', text)
    assert found, f"{script} sets its port from {variable}"
    return int(found.group(1))


def test_defaults_start_scripts_and_readme_agree_on_ports() -> None:
    redis_port = urlsplit(RedisSettings().url).port
    kafka_port = int(KafkaSettings().bootstrap_servers.rpartition(":")[2])
    assert _script_default_port("start_redis.sh", "REDIS_PORT") == redis_port == 6379
    assert _script_default_port("start_kafka.sh", "KAFKA_PORT") == kafka_port == 9092
    readme = (REPO / "README.md").read_text()
    for port in re.findall(r"redis://127\.0\.0\.1:(\d+)", readme):
        assert int(port) == redis_port
    for port in re.findall(r"127\.0\.0\.1:(\d+)", readme):
        assert int(port) in (redis_port, kafka_port, 9090, 9400), port  # Prometheus, metrics
