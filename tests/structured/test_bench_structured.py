"""scripts/bench_structured.py's mask mode runs end to end on the CPU at tiny sizes: it checks
the plumbing (every row, positive times), never the speed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_mask_mode_writes_a_row_per_vocabulary_batch_and_share(tmp_path: Path) -> None:
    out = tmp_path / "mask.json"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "bench_structured.py"), "mask",
         "--device", "cpu", "--batch-sizes", "1,8", "--fractions", "1,0.5", "--iters", "1",
         "--fill-threads", "1", "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["vocab"], r["batch"], r["constrained"]) for r in rows] == [
        (vocab, batch, n)
        for vocab in ("smollm2", "llama3-8b")
        for batch, n in ((1, 1), (1, 1), (8, 8), (8, 4))
    ]
    assert all(r["fill_ms"] > 0 and r["copy_apply_ms"] > 0 and r["total_ms"] > 0 for r in rows)
    assert {r["vocab_size"] for r in rows} == {49152, 128256}


@pytest.mark.timeout(1500)
def test_e2e_mode_writes_a_row_per_model_batch_and_share(tmp_path: Path) -> None:
    """The bundled model only: the 8B shape (dummy weights, SmolLM2's tokenizer) is GPU-sized."""
    out = tmp_path / "e2e.json"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "bench_structured.py"), "e2e",
         "--device", "cpu", "--models", "smollm2", "--batch-sizes", "1,2", "--fractions",
         "0,0.5,1", "--input-len", "4", "--output-len", "2", "--rounds", "1",
         "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["batch"], r["constrained_fraction"]) for r in rows] == [
        ("smollm2", batch, share) for batch in (1, 2) for share in (0.0, 0.5, 1.0)
    ]
    assert all(r["output_tokens_per_s"] > 0 and r["mean_output_len"] > 0 for r in rows)
    assert all(r["vs_unconstrained"] > 0 for r in rows)
    assert "vs none" in done.stdout  # the table
