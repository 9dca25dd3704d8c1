"""Every third-party import under worker/, kernels/ and schemas/ is a declared dependency of the
installed llm-worker: a base requirement, or an extra's behind a guard that names the extra.

Oracles: the source's own syntax tree (ast) for what is imported, importlib.metadata for which
installed distribution provides each module and what llm-worker's Requires-Dist declares. An
import is mapped to the distribution that installs its most specific module, so namespace
packages (opentelemetry.sdk, opentelemetry.exporter.prometheus) are told apart.
"""

import ast
import importlib.metadata as metadata
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from llm_worker.extras import MissingExtra

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("worker", "kernels", "schemas")
PROJECT = "llm-worker"
OUR_PACKAGE = "llm_worker"
TEST_EXTRAS = frozenset({"dev"})  # what the tests and linters need: never the package's own


@dataclass(frozen=True)
class Import:
    module: str  # dotted, as written (`from a.b import c` gives a.b and a.b.c)
    where: str  # file:line
    extras_named: frozenset[str]  # extras a guard around it names; empty: none


def _handler_catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(
        isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names
    )


def _extras_raised(try_node: ast.Try) -> frozenset[str]:
    """String constants in the `raise` of an ImportError handler: a guard names its extra."""
    named: set[str] = set()
    for handler in try_node.handlers:
        if not _handler_catches_import_error(handler):
            continue
        for raise_node in (n for n in ast.walk(handler) if isinstance(n, ast.Raise)):
            for node in ast.walk(raise_node):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    named.add(node.value)
    return frozenset(named)


def _imports(tree: ast.AST, where: str) -> Iterator[Import]:
    """Absolute imports with the extras named by the guards around them; module-level imports
    outside any guard name none."""

    def walk(node: ast.AST, guard: frozenset[str], in_function: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            child_guard = guard
            if isinstance(child, ast.Try) and in_function:
                child_guard = guard | _extras_raised(child)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(alias.name, f"{where}:{child.lineno}", guard)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                yield Import(child.module, f"{where}:{child.lineno}", guard)
                for alias in child.names:
                    yield Import(f"{child.module}.{alias.name}", f"{where}:{child.lineno}", guard)
            is_function = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            yield from walk(child, child_guard, in_function or is_function)

    yield from walk(tree, frozenset(), False)


def source_imports(dirs: tuple[str, ...] = SOURCE_DIRS) -> list[Import]:
    found = []
    for folder in dirs:
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            found.extend(_imports(tree, str(path.relative_to(REPO))))
    return [
        imp
        for imp in found
        if imp.module.partition(".")[0] not in sys.stdlib_module_names
        and imp.module.partition(".")[0] != OUR_PACKAGE
    ]


@cache
def _modules_of_distributions() -> dict[str, frozenset[str]]:
    """Dotted module or package name -> the distributions whose files install it."""
    owners: dict[str, set[str]] = {}
    top_level = metadata.packages_distributions()
    for dist_names in top_level.values():
        for dist_name in dist_names:
            for file in metadata.distribution(dist_name).files or []:
                parts = file.parts
                if not parts or parts[0].endswith((".dist-info", ".data")) or ".." in parts:
                    continue
                if parts[-1].endswith((".py", ".so", ".pyd")):
                    stem = parts[-1].split(".")[0]
                    dotted = [*parts[:-1]] if stem == "__init__" else [*parts[:-1], stem]
                    for i in range(1, len(dotted) + 1):
                        owners.setdefault(".".join(dotted[:i]), set()).add(dist_name)
    return {module: frozenset(dists) for module, dists in owners.items()}


def distributions_of(module: str) -> frozenset[str]:
    """The canonical names of the distributions that install `module`'s most specific known
    part; empty when no installed distribution provides it."""
    owners = _modules_of_distributions()
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        dists = owners.get(".".join(parts[:i]))
        if dists:
            return frozenset(canonicalize_name(d) for d in dists)
    return frozenset()


@dataclass(frozen=True)
class Declared:
    base: frozenset[str]  # always installed
    by_extra: dict[str, frozenset[str]]  # extra -> what it adds


@cache
def declared() -> Declared:
    """llm-worker's Requires-Dist as installed, an extra's self-references (llm-worker[x])
    expanded into what x declares."""
    extras = metadata.metadata(PROJECT).get_all("Provides-Extra") or []
    requirements = [Requirement(r) for r in metadata.requires(PROJECT) or []]

    def wanted(extra: str | None) -> list[Requirement]:
        env = {"extra": extra or ""}
        return [r for r in requirements if r.marker is None or r.marker.evaluate(env)]

    base = frozenset(canonicalize_name(r.name) for r in wanted(None))

    def closure(extra: str, seen: frozenset[str]) -> frozenset[str]:
        names: set[str] = set()
        for r in wanted(extra):
            if canonicalize_name(r.name) == PROJECT:
                for inner in r.extras - seen:
                    names |= closure(inner, seen | {inner})
            else:
                names.add(canonicalize_name(r.name))
        return frozenset(names) - base

    return Declared(base, {extra: closure(extra, frozenset({extra})) for extra in extras})


def undeclared(imports: list[Import]) -> list[str]:
    """One line for each import the installed metadata does not account for."""
    problems = []
    decl = declared()
    for imp in imports:
        dists = distributions_of(imp.module)
        if not dists:
            if imp.module.count(".") == 0 or not distributions_of(imp.module.rpartition(".")[0]):
                problems.append(f"{imp.where}: {imp.module}: no installed distribution has it")
            continue  # `from pkg import name`: a name, not a module
        if dists & decl.base:
            continue
        extras = sorted(
            x for x, adds in decl.by_extra.items() if dists & adds and x not in TEST_EXTRAS
        )
        if not extras:
            problems.append(f"{imp.where}: {imp.module} ({', '.join(sorted(dists))}) undeclared")
        elif not any(f"[{x}]" in s or s == x for x in extras for s in imp.extras_named):
            problems.append(
                f"{imp.where}: {imp.module} comes only with extra {' or '.join(extras)}: import "
                "it inside a function, in a try whose ImportError handler raises a message "
                "naming the extra (llm_worker.extras.MissingExtra)"
            )
    return problems


def test_every_import_is_a_declared_dependency() -> None:
    imports = source_imports()
    assert len({imp.module.partition(".")[0] for imp in imports}) >= 10, "the walk found imports"
    problems = undeclared(imports)
    assert not problems, "\n".join(problems)


def test_the_check_sees_undeclared_imports() -> None:
    """The same check on source that imports what is installed but not the package's to use:
    a transitive dependency (yaml, through huggingface-hub) and a test-only one (hypothesis)."""
    bad = "import yaml\n\ndef f():\n    from hypothesis import given\n"
    problems = undeclared(list(_imports(ast.parse(bad), "bad.py")))
    assert any(p.startswith("bad.py:1: yaml (pyyaml) undeclared") for p in problems), problems
    assert any(p.startswith("bad.py:4: hypothesis (hypothesis) undeclared") for p in problems)


def test_an_extra_needs_a_guard_that_names_it() -> None:
    unguarded = "def build():\n    from opentelemetry.exporter.otlp.proto.http import Compression\n"
    guarded = (
        "def build():\n"
        "    try:\n"
        "        from opentelemetry.exporter.otlp.proto.http import Compression\n"
        "    except ImportError as exc:\n"
        "        raise MissingExtra('OTEL_EXPORTER_OTLP_ENDPOINT', 'otlp', exc) from exc\n"
    )
    problems = undeclared(list(_imports(ast.parse(unguarded), "u.py")))
    assert any("comes only with extra otlp" in p for p in problems), problems
    assert undeclared(list(_imports(ast.parse(guarded), "g.py"))) == []


def test_the_otlp_guard_raises_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the guard promises, run: the exporter missing, OTLP asked for, a clear refusal."""
    from llm_worker.telemetry import build_telemetry

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.metric_exporter", None)
    with pytest.raises(MissingExtra, match=r"pip install 'llm-worker\[otlp\]'"):
        build_telemetry("w", "m", "redis")
