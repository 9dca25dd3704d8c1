"""scripts/perplexity.py end to end on the bundled model (CPU, a prefix of the text, two
prompts): the rows it prints, and a perplexity that is the text's (finite, far under the
vocabulary's 49,152 of a model that knew nothing)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_cpu_smoke_run(tmp_path: Path, smollm2_dir: Path) -> None:
    out = tmp_path / "ppl.json"
    done = _run(tmp_path, "--configs", "fp8", "--output-json", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert list(rows) == ["fp32", "fp8"]
    for row in rows.values():
        assert row["num_tokens"] == 159 and 1 < row["perplexity"] < 1000
        assert len(row["greedy"]) == 2
    assert "| fp8 |" in done.stdout and "| fp32 |" in done.stdout
    # --reference: a second table against the first one's fp32 row, which is not run again
    again = tmp_path / "again.json"
    _run(tmp_path, "--configs", "fp8", "--reference", str(out), "--output-json", str(again))
    reused = json.loads(again.read_text())["rows"]
    assert reused["fp32"] == rows["fp32"] and reused["fp8"]["greedy"] == rows["fp8"]["greedy"]


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "perplexity.py"), "--device", "cpu",
         "--max-text-tokens", "160", "--num-prompts", "2", "--max-tokens", "4", "--chunk", "64",
         "--work-dir", str(tmp_path), *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return done
