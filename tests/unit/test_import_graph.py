"""The package's import graph: no cycles, and the bookkeeping core stays free of torch and of the
settings layer.

The graph is read from the source (every `import` anywhere in a module, function bodies
included, since a deferred import is still a dependency), so the test sees a cycle before any
import order happens to trip over it. The core's own imports are checked in a fresh interpreter.
"""

import ast
import importlib.util
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT_PACKAGES = ("llm_worker", "llm_worker.kernels", "llm_worker.schemas")
# Pure bookkeeping: what a step decides and how a sequence's state changes, no tensors.
TORCH_FREE = (
    "llm_worker.engine.block_manager",
    "llm_worker.engine.config",
    "llm_worker.engine.free_list",
    "llm_worker.engine.scheduler",
    "llm_worker.engine.sequence",
    "llm_worker.engine.update",
)


def _module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (the source folders are mapped into one
    package by the install, so each root is located through the import system)."""
    files: dict[str, Path] = {}
    for package in ROOT_PACKAGES:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations, package
        folder = Path(next(iter(spec.submodule_search_locations)))
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join((package, *parts))] = path
    return files


def _imported_names(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            assert node.level == 0, "relative imports are not used in this package"
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name == "llm_worker" or name.startswith("llm_worker.")}


@cache
def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (a `from m import x` counts m.x when that is a
    module, else m). Package __init__ files are empty, so parent packages are left out."""
    files = _module_files()
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        names = _imported_names(ast.parse(path.read_text(), str(path)))
        targets = {name for name in names if name in files}
        for name in names - targets:  # `from m import x` where x is a class or function
            assert name.rsplit(".", 1)[0] in files, f"{module} imports unknown {name}"
        graph[module] = {t for t in targets if files[t].name != "__init__.py"} - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)) is not None:
            return cycle
    return None


def longest_chain(graph: dict[str, set[str]], start: str) -> list[str]:
    """The longest chain of imports from `start` (the graph must have no cycle)."""

    @cache
    def chain(module: str) -> tuple[str, ...]:
        longest = max((chain(t) for t in graph.get(module, ())), key=len, default=())
        return (module, *longest)

    return list(chain(start))


def test_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert longest_chain({"a": {"b", "c"}, "b": {"c"}, "c": set()}, "a") == ["a", "b", "c"]


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "llm_worker.engine.scheduler" in graph and "llm_worker.kernels.pdl" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_engine_is_a_shallow_stack() -> None:
    """engine -> builder -> speculator -> draft -> graphs -> inputs -> sequence: the longest
    chain of engine modules from the top stays short (it was ten deep from the builder,
    through the builder <-> engine cycle). Models and kernels below are another stack."""
    graph = import_graph()
    engine = {m: {t for t in ts if t.startswith("llm_worker.engine.")} for m, ts in graph.items()
              if m.startswith("llm_worker.engine.")}  # fmt: skip
    chain = longest_chain(engine, "llm_worker.engine.llm_engine")
    assert len(chain) <= 7, " -> ".join(chain)


def test_the_bookkeeping_core_imports_no_torch_and_no_settings() -> None:
    """The scheduler, block manager, sequence and update run in a fresh interpreter without
    torch, numpy or pydantic-settings being imported."""
    code = (
        "import importlib, sys\n"
        f"for name in {TORCH_FREE!r}:\n"
        "    importlib.import_module(name)\n"
        "banned = ('torch', 'numpy', 'pydantic_settings', 'llm_worker.config')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in banned or m in banned))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
