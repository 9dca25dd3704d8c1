"""scripts/dev/ab.py against small source trees of both layouts: a tree from before the rename
(its folders import as `worker`) and one that imports as `llm_worker` (through a link tree). Each
tree's program records its own run in a shared file and prints a figure, so the order of the runs,
their separate processes, which tree's code ran and what the harness reports can all be checked."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
AB = REPO_ROOT / "scripts" / "dev" / "ab.py"

RECORD = """
import os
from pathlib import Path


def record(tree: str) -> float:
    path = Path(os.environ["AB_TEST_RECORD"])
    previous = path.read_text().splitlines() if path.exists() else []
    path.write_text("".join(line + "\\n" for line in [*previous, f"{tree} {os.getpid()}"]))
    return BASE + len(previous)
"""
MAIN = """
import sys

from {package}.record import record

print("args", sys.argv[1:])
print(f"Throughput: 1.00 requests/s, 2.00 total tokens/s, {{record('{tree}'):.2f}} output tokens/s")
"""
SCRIPT = """
from {package}.record import record

print(f"batch 1 decode (graphs_async): {{record('{tree}'):.3f}} ms/token = 1.2x roofline")
"""


def make_tree(root: Path, package: str, base: float) -> Path:
    """A checkout whose `llm-worker` command is PACKAGE.cli:main; its worker/ folder holds a
    __main__ that prints a throughput line and a module with the figure BASE + runs so far."""
    (root / "worker").mkdir(parents=True)
    (root / "kernels").mkdir()
    (root / "schemas").mkdir()
    (root / "scripts").mkdir()
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "t"\n[project.scripts]\nllm-worker = "{package}.cli:main"\n'
    )
    tree = root.name
    (root / "worker" / "__init__.py").write_text("")
    (root / "worker" / "record.py").write_text(f"BASE = {base}\n" + RECORD)
    (root / "worker" / "__main__.py").write_text(MAIN.format(package=package, tree=tree))
    (root / "scripts" / "decode.py").write_text(SCRIPT.format(package=package, tree=tree))
    return root


def run_ab(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    log_dir = tmp_path / "logs"
    done = subprocess.run(
        [sys.executable, str(AB), "--log-dir", str(log_dir), *args],
        env={"AB_TEST_RECORD": str(tmp_path / "record"), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    summary = json.loads((log_dir / "ab.json").read_text()) if log_dir.exists() else {}
    return done, summary


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    return make_tree(tmp_path / "old", "worker", 100.0), make_tree(
        tmp_path / "new", "llm_worker", 200.0
    )


def test_cli_runs_alternate_each_in_its_own_process_in_its_own_tree(
    trees: tuple[Path, Path], tmp_path: Path
) -> None:
    old, new = trees
    command = ["llm-worker", "bench", "throughput", "--num-prompts", "4"]
    done, summary = run_ab(tmp_path, "--a", str(old), "--b", str(new), "--rounds", "2", "--",
                           *command)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    records = [line.split() for line in (tmp_path / "record").read_text().splitlines()]
    assert [tree for tree, _ in records] == ["old", "new", "old", "new"]
    assert len({pid for _, pid in records}) == 4
    runs = summary["runs"]
    assert [(r["side"], r["round"]) for r in runs] == [("A", 1), ("B", 1), ("A", 2), ("B", 2)]
    # Each tree's own module gave the figure: BASE + the runs recorded before it.
    assert [r["figures"] for r in runs] == [
        {"out tok/s": 100.0}, {"out tok/s": 201.0}, {"out tok/s": 102.0}, {"out tok/s": 203.0}
    ]
    assert summary["trees"]["A"]["package"] == "worker"
    assert summary["trees"]["B"]["package"] == "llm_worker"
    assert f"args {command[1:]}" in (tmp_path / "logs" / "B2.log").read_text()
    row = "out tok/s | 100 | 201 | 102 | 203 | 101 | 202 | 2.0000 (B better by 100.00%)"
    assert row in done.stdout  # medians 101 and 202


def test_a_script_runs_from_each_tree_with_its_own_package(
    trees: tuple[Path, Path], tmp_path: Path
) -> None:
    old, new = trees
    done, summary = run_ab(tmp_path, "--a", str(old), "--b", str(new), "--rounds", "1",
                           "--", "scripts/decode.py")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    figures = [r["figures"] for r in summary["runs"]]
    assert figures == [{"ms/token graphs_async": 100.0}, {"ms/token graphs_async": 201.0}]
    assert "B worse by 101.00%" in done.stdout  # ms/token: lower is better


def test_a_failing_run_is_reported_and_fails_the_harness(
    trees: tuple[Path, Path], tmp_path: Path
) -> None:
    old, new = trees
    (new / "worker" / "__main__.py").write_text("raise SystemExit('no such engine')\n")
    done, summary = run_ab(tmp_path, "--a", str(old), "--b", str(new), "--rounds", "1",
                           "--", "bench", "throughput")  # fmt: skip
    assert done.returncode == 1
    assert [r["returncode"] for r in summary["runs"]] == [0, 1]
    assert "B1 exited 1:" in done.stdout and "no such engine" in done.stdout


@pytest.mark.timeout(300)
def test_this_checkout_runs_a_tiny_cpu_throughput_bench(tmp_path: Path) -> None:
    old = make_tree(tmp_path / "old", "worker", 100.0)
    done = subprocess.run(
        [sys.executable, str(AB), "--a", str(old), "--b", str(REPO_ROOT), "--rounds", "1", "--",
         "bench", "throughput", "--model", "tiny-llama", "--load-format", "dummy", "--device",
         "cpu", "--num-prompts", "2", "--input-len", "8", "--output-len", "4"],
        env={"AB_TEST_RECORD": str(tmp_path / "record"), "PATH": "/usr/bin:/bin",
             "OMP_NUM_THREADS": "1", "HOME": str(Path.home())},
        capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("out tok/s"))
    assert float(row.split(" | ")[2]) > 0  # B1, this checkout's engine
