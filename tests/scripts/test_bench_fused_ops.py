"""scripts/bench_fused_ops.py runs end to end on CPU (Triton interpreter, tiny shapes): it checks
the plumbing and that the fused results agree with torch, never the speed."""

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_cpu_smoke_run_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "fused.json"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "bench_fused_ops.py"), "--device", "cpu",
         "--dtype", "float32", "--tokens", "1,3", "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    ops = ["add_rms_norm", "rotary", "silu_mul", "layer", "step"]
    assert [(r["tokens"], r["op"]) for r in rows] == [(t, op) for t in (1, 3) for op in ops]
    assert all(r["max_err"] < 1e-5 for r in rows if r["op"] not in ("layer", "step"))
    assert all(r["fused_us"] > 0 and r["torch_us"] > 0 for r in rows)
