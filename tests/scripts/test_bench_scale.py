"""scripts/bench_scale.py end to end on the real test Redis: CPU workers and the tiny shape, so
it checks the measurement's plumbing (fresh stream per N, release, exactly-one check, SIGTERM
shutdown), never its speed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.brokers import redis_url

__all__ = ["redis_url"]

REPO_ROOT = Path(__file__).resolve().parents[2]
NUM_JOBS = 24
MAX_TOKENS = 4


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_every_job_gets_exactly_one_terminal_result(redis_url: str, tmp_path: Path) -> None:
    summary_path = tmp_path / "scale.json"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "bench_scale.py"), "--allow-cpu",
         "--model", "tiny-llama", "--workers", "1,2", "--num-jobs", str(NUM_JOBS),
         "--input-len", "8", "--output-len", str(MAX_TOKENS),
         # fewer jobs held per worker than half the workload, so both workers get some
         "--max-in-flight", "8", "--warmup-jobs", "0", "--redis-url", redis_url,
         "--log-dir", str(tmp_path / "logs"), "--no-progress", "--json-out", str(summary_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=110,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["all_exactly_one"] and summary["all_ok"]
    runs = {run["num_workers"]: run for run in summary["runs"]}
    assert sorted(runs) == [1, 2]
    for num_workers, run in runs.items():
        check = run["check"]
        assert check["num_exactly_one"] == check["num_jobs"] == NUM_JOBS
        assert check["num_missing"] == check["num_duplicated"] == check["num_unexpected"] == 0
        assert check["num_unfinished"] == check["num_dead_letters"] == 0
        assert check["num_output_tokens"] == NUM_JOBS * MAX_TOKENS
        assert run["exit_codes"] == [0] * num_workers  # SIGTERM: a clean exit
        assert len(check["jobs_per_worker"]) == num_workers  # the group fed every worker
    assert summary["efficiency"]["1"] == 1.0
