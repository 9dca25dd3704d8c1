"""`llm-worker serve | enqueue | result | health` as users run them, on a real redis-server."""

import os
import signal
import subprocess
import sys

import pytest

from tests.brokers import redis_url, unique_name

__all__ = ["redis_url", "unique_name"]


def _cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_worker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.integration
@pytest.mark.slow
def test_serve_enqueue_result_and_sigterm(redis_url: str, unique_name: str) -> None:
    env = {
        **os.environ,
        "LLM_WORKER_REDIS__PREFIX": unique_name,
        "LLM_WORKER_REDIS__URL": redis_url,
    }
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "llm_worker", "serve"),
            *("--worker-id", "cli-test", "--max-num-seqs", "4"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        sent = _cli(
            "enqueue",
            "--prompt",
            "The capital of France is",
            "--max-tokens",
            "6",
            "--id",
            "cli-1",
            "--wait",
            "--timeout-s",
            "90",
            env=env,
        )
        assert sent.returncode == 0, sent.stderr
        assert '"status":"completed"' in sent.stdout and "Paris" in sent.stdout
        shown = _cli("result", "cli-1", env=env)
        assert shown.returncode == 0 and '"worker_id": "cli-test"' in shown.stdout
        missing = _cli("result", "no-such-job", env=env)
        assert missing.returncode == 1 and "no terminal result" in missing.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output[-2000:]


def test_health_reports_an_unreachable_worker() -> None:
    done = _cli(
        "health", "--url", "http://127.0.0.1:9/readyz", "--timeout-s", "1", env=dict(os.environ)
    )
    assert done.returncode == 1 and "unreachable" in done.stderr
