#!/usr/bin/env python
"""Check that a change to Python files touched only comments and docstrings.

Every .py file that differs between REV and the working tree (or the files named) is parsed on
both sides; docstrings (a string statement first in a module, class or function) are dropped and
the syntax trees compared. Comments never reach the tree, so what is left is the code: equal
trees mean equal behaviour. Exits 1 and names the files whose code changed (or that were added,
removed, or do not parse).

    python scripts/dev/same_code.py main                      # every .py changed since main
    python scripts/dev/same_code.py HEAD~3 kernels/pdl.py     # only this file
"""

import argparse
import ast
import os
import subprocess
import sys
from pathlib import Path

DOCSTRING_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if not isinstance(node, DOCSTRING_OWNERS) or not node.body:
            continue
        first = node.body[0]
        if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
            node.body = node.body[1:] or [ast.Pass()]
    return tree


def code_of(source: str) -> str:
    return ast.dump(without_docstrings(ast.parse(source)), include_attributes=False)


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=False)


def changed_files(rev: str) -> list[str]:
    done = git("diff", "--name-only", rev, "--", "*.py")
    if done.returncode != 0:
        sys.exit(f"same_code: git diff {rev} failed: {done.stderr.strip()}")
    return [line for line in done.stdout.splitlines() if line]


def compare(rev: str, path: str) -> str | None:
    """None when the code of `path` is the same at `rev` and in the working tree, else why not."""
    before = git("show", f"{rev}:{path}")
    after = Path(path)
    if before.returncode != 0:
        return "not in " + rev
    if not after.exists():
        return "removed"
    try:
        same = code_of(before.stdout) == code_of(after.read_text())
    except SyntaxError as error:
        return f"does not parse: {error}"
    return None if same else "code changed"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("rev", help="the revision to compare the working tree with")
    p.add_argument("files", nargs="*", help="files to compare (default: every .py changed)")
    args = p.parse_args()
    os.chdir(git("rev-parse", "--show-toplevel").stdout.strip() or ".")  # git diff's paths
    files = args.files or changed_files(args.rev)
    problems = {path: why for path in files if (why := compare(args.rev, path)) is not None}
    for path, why in problems.items():
        print(f"same_code: {path}: {why}", file=sys.stderr)
    print(f"same_code: {len(files) - len(problems)} of {len(files)} files: comments and "
          f"docstrings only since {args.rev}")  # fmt: skip
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
