"""scripts/poison_corpus.py and scripts/kill_trials.py end to end at a small size on the real
test brokers: the plumbing of the must-show runs (corpus, accounting, kills, restarts) in CI;
the full-size figures are the scripts' own runs."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.brokers import kafka_bootstrap, redis_url

__all__ = ["kafka_bootstrap", "redis_url"]

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _broker_args(queue: str, request: pytest.FixtureRequest) -> list[str]:
    args = ["--queue", queue, "--redis-url", request.getfixturevalue("redis_url")]
    if queue == "kafka":
        args += ["--kafka-bootstrap-servers", request.getfixturevalue("kafka_bootstrap")]
    return args


def _run(script: str, args: list[str], tmp_path: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / script), *args, "--log-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("queue", ["redis", "kafka"])
def test_poison_corpus_is_accounted_for_and_not_republished(
        queue: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    out = _run("poison_corpus.py", [*_broker_args(queue, request), "--messages", "120",
                                    "--valid", "12", "--restart-watch-s", "3"], tmp_path)
    assert "| completed | 12 | 12 |" in out
    assert "| job ids with more than one record | 0 | 0 |" in out
    assert "| records published by the restarted worker | 0 |" in out


@pytest.mark.parametrize("queue", ["kafka"])  # Redis: test_service_redis.py kills a worker
def test_a_killed_worker_loses_and_duplicates_nothing(
        queue: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    out = _run("kill_trials.py", [*_broker_args(queue, request), "--trials", "1", "--jobs", "30",
                                  "--kills", "1", "--max-tokens", "32"], tmp_path)
    [total] = [line for line in out.splitlines() if line.startswith("| total |")]
    kills, lost, duplicated, dead = total.split("|")[2:6]
    assert (int(kills), int(lost), int(duplicated), int(dead)) == (1, 0, 0, 0)
