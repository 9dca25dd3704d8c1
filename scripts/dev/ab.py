#!/usr/bin/env python3
"""A/B: one command in two source trees, each run in a process of its own, alternated (A B A B
...), and each run's key figures side by side with the median of each side and B / A.

    python scripts/dev/ab.py --a /tmp/old --b . --rounds 2 -- \\
        bench throughput --model llama3-8b --load-format dummy --input-len 128 \\
        --output-len 256 --num-prompts 1000
    python scripts/dev/ab.py --a /tmp/old --b . -- scripts/bench_decode_roofline.py \
        --modes graphs_async
    python scripts/dev/ab.py --a /tmp/old --b . -- scripts/bench_spec.py --parts a

The command is either the CLI's arguments (`bench throughput ...`; a leading `llm-worker` is
dropped), run as `python -m PACKAGE ...`, or a path ending in .py, the tree's own copy of that
script. Each tree runs from its root, importing its own code: a tree whose pyproject.toml maps
the `llm-worker` command to `worker.cli` (before the package was named llm_worker) has its root
on PYTHONPATH; a later one gets a link tree (scripts/link_package.sh) of its folders as
`llm_worker`. Both go in front of the PYTHONPATH inherited (on the GPU machine, the one
scripts/dev/device_setup.sh exported, with the carried wheels).

Figures are read from each run's output by --figure NAME=REGEX (the last group is the number; a
group named `label` is added to the name), or else by the presets below: `bench throughput`,
`bench latency`, scripts/bench_decode_roofline.py and scripts/bench_spec.py. The first round
also pays Triton's compilation of each tree's kernels where its cache is cold: use --rounds 3
and read the medians, or read rounds 2 on.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

LINK_PACKAGE = Path(__file__).resolve().parents[1] / "link_package.sh"


@dataclass(frozen=True)
class Figure:
    name: str
    pattern: re.Pattern[str]
    higher_is_better: bool | None  # None: no direction known


THROUGHPUT = r"^Throughput: .*?([\d.]+) output tokens/s"  # bench throughput
LATENCY = r"^Latency \(s per batch\): mean ([\d.]+)"  # bench latency
DECODE = r"^batch 1 decode \((?P<label>\w+)\): ([\d.]+) ms/token"  # bench_decode_roofline.py
SPEC_ROW = r"^(?P<label>plain|ngram(?:, adaptive)?|draft: [^\n]*?)\s+\d+\s+([\d.]+)\s+[\d.]+x"
PRESETS = (
    Figure("out tok/s", re.compile(THROUGHPUT, re.M), True),
    Figure("latency mean s", re.compile(LATENCY, re.M), False),
    Figure("ms/token", re.compile(DECODE, re.M), False),
    Figure("tok/s", re.compile(SPEC_ROW, re.M), True),  # bench_spec.py's rows
)


@dataclass(frozen=True)
class Tree:
    side: str  # "A" or "B"
    root: Path
    package: str  # what the tree's code imports as: worker (before the rename) or llm_worker
    pythonpath: str  # what goes in front of the inherited PYTHONPATH
    commit: str


@dataclass
class Run:
    side: str
    round: int
    returncode: int
    wall_s: float
    figures: dict[str, float]
    log: str


def package_of(root: Path) -> str:
    """The package the `llm-worker` command of the tree's pyproject.toml runs (`X.cli:main`)."""
    project = tomllib.loads((root / "pyproject.toml").read_text()).get("project", {})
    target = project.get("scripts", {}).get("llm-worker")
    if not target:
        raise SystemExit(f"ab: {root}/pyproject.toml names no `llm-worker` command")
    return str(target).split(".", 1)[0]


def git_in(root: Path, *args: str) -> str | None:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          check=False)  # fmt: skip
    return done.stdout.strip() if done.returncode == 0 else None


def commit_of(root: Path) -> str:
    """The tree's commit, when it is a checkout of its own (not an archive inside another)."""
    if git_in(root, "rev-parse", "--show-toplevel") != str(root):
        return "not a checkout"
    return git_in(root, "describe", "--always", "--dirty") or "?"


def prepare(side: str, root: Path, work_dir: Path) -> Tree:
    root = root.resolve()
    package = package_of(root)
    if package == "worker":
        pythonpath = str(root)
    else:
        subprocess.run(["bash", str(LINK_PACKAGE), str(work_dir / side), str(root)], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        pythonpath = str(work_dir / side)
    return Tree(side, root, package, pythonpath, commit_of(root))


def argv_for(tree: Tree, command: list[str], python: str) -> list[str]:
    if command[0].endswith(".py"):
        return [python, str(tree.root / command[0]), *command[1:]]
    args = command[1:] if command[0] == "llm-worker" else command
    return [python, "-m", tree.package, *args]


def read_figures(figures: list[Figure], text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for figure in figures:
        for match in figure.pattern.finditer(text):
            label = match.groupdict().get("label")
            name = f"{figure.name} {label.strip()}" if label else figure.name
            key, n = name, 1
            while key in found:  # the same row again (another section of the output)
                n += 1
                key = f"{name} ({n})"
            found[key] = float(match.groups()[-1])
    return found


def as_text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def run_once(tree: Tree, argv: list[str], timeout_s: float, log_path: Path | None) -> Run:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [tree.pythonpath, env.get("PYTHONPATH")]))
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=tree.root, env=env, capture_output=True, text=True,
                              timeout=timeout_s, check=False)  # fmt: skip
        returncode, log = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        returncode = 124
        killed = f"\nab: killed after {timeout_s} s\n"
        log = as_text(expired.stdout) + as_text(expired.stderr) + killed
    wall_s = time.perf_counter() - start
    if log_path is not None:
        log_path.write_text(f"$ {' '.join(argv)}  (in {tree.root})\n{log}")
    return Run(tree.side, 0, returncode, wall_s, {}, log)


def change(a: float, b: float, higher_is_better: bool | None) -> str:
    if a == 0:
        return "-"
    ratio = b / a
    if higher_is_better is None:
        return f"{ratio:.4f}"
    better = ratio > 1 if higher_is_better else ratio < 1
    return f"{ratio:.4f} (B {'better' if better else 'worse'} by {abs(ratio - 1):.2%})"


def direction(name: str, figures: list[Figure]) -> bool | None:
    return next((f.higher_is_better for f in figures if name.startswith(f.name)), None)


def report(trees: dict[str, Tree], runs: list[Run], figures: list[Figure]) -> str:
    lines = [f"{t.side}: {t.root} ({t.commit}, imports {t.package})" for t in trees.values()]
    names = list(dict.fromkeys(name for run in runs for name in run.figures))
    heads = [f"{run.side}{run.round}" for run in runs]
    lines.append(" | ".join(["figure", *heads, "median A", "median B", "B / A"]))
    for name in names:
        values = {side: [r.figures[name] for r in runs if r.side == side and name in r.figures]
                  for side in "AB"}  # fmt: skip
        cells = [f"{r.figures[name]:.4g}" if name in r.figures else "-" for r in runs]
        if values["A"] and values["B"]:
            a, b = statistics.median(values["A"]), statistics.median(values["B"])
            cells += [f"{a:.4g}", f"{b:.4g}", change(a, b, direction(name, figures))]
        lines.append(" | ".join([name, *cells]))
    lines.append(" | ".join(["wall s", *(f"{r.wall_s:.1f}" for r in runs)]))
    for run in runs:
        if run.returncode != 0:
            tail = "\n    ".join(run.log.rstrip().splitlines()[-15:])
            lines.append(f"{run.side}{run.round} exited {run.returncode}:\n    {tail}")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--a", type=Path, required=True, help="tree A (the baseline, e.g. /tmp/old)")
    p.add_argument("--b", type=Path, required=True, help="tree B (e.g. .)")
    p.add_argument("--rounds", type=int, default=2, help="A B pairs (default 2: A B A B)")
    p.add_argument("--figure", action="append", default=[], metavar="NAME=REGEX",
                   help="a figure to read instead of the presets (repeatable)")  # fmt: skip
    p.add_argument("--timeout-s", type=float, default=3600, help="per run")
    p.add_argument("--python", default=sys.executable, help="the interpreter of every run")
    p.add_argument("--log-dir", type=Path, help="each run's output (A1.log, ...) and ab.json")
    p.add_argument("command", nargs=argparse.REMAINDER, help="after --: the command")
    args = p.parse_args()
    args.command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not args.command or args.rounds < 1:
        p.error("give a command after -- and --rounds >= 1")
    return args


def custom_figures(specs: list[str]) -> list[Figure]:
    figures = []
    for spec in specs:
        name, sep, pattern = spec.partition("=")
        if not sep:
            raise SystemExit(f"ab: --figure takes NAME=REGEX, got {spec!r}")
        figures.append(Figure(name, re.compile(pattern, re.M), None))
    return figures


def main() -> int:
    args = parse_args()
    figures = custom_figures(args.figure) or list(PRESETS)
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="ab-") as work:
        sides = (("A", args.a), ("B", args.b))
        trees = {side: prepare(side, root, Path(work)) for side, root in sides}
        for round_idx in range(1, args.rounds + 1):
            for tree in trees.values():
                log_path = args.log_dir / f"{tree.side}{round_idx}.log" if args.log_dir else None
                print(f"ab: {tree.side}{round_idx}: {' '.join(args.command)}", file=sys.stderr)
                run = run_once(tree, argv_for(tree, args.command, args.python), args.timeout_s,
                               log_path)  # fmt: skip
                run.round, run.figures = round_idx, read_figures(figures, run.log)
                runs.append(run)
    print(report(trees, runs, figures))
    if args.log_dir:
        summary = {
            "command": args.command,
            "trees": {side: {**asdict(t), "root": str(t.root)} for side, t in trees.items()},
            "runs": [{k: v for k, v in asdict(r).items() if k != "log"} for r in runs],
        }
        (args.log_dir / "ab.json").write_text(json.dumps(summary, indent=2))
    return 0 if all(run.returncode == 0 and run.figures for run in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
