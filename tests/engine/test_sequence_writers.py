"""One writer for each piece of a request's state, read from the source.

update.py writes a sequence's tokens, counts, finish and metrics and its request's error and
logprobs; scheduler.py only its place in the queues; block_manager.py only its blocks. A write
is an assignment to, a deletion from, or a mutating call on one of those fields, anywhere in
the package; a receiver named `seq` (or `*.seq`, `metrics`, `request`) is how the package
names these objects.
"""

import ast
import dataclasses
from pathlib import Path

from llm_worker.engine.request import Request
from llm_worker.engine.sequence import Sequence, SequenceMetrics
from tests.unit.test_import_graph import _module_files

UPDATE = "llm_worker.engine.update"
SCHEDULER = "llm_worker.engine.scheduler"
BLOCK_MANAGER = "llm_worker.engine.block_manager"
# Construction-time fields nobody changes afterwards: request_id, num_prompt_tokens, params,
# priority, cache_salt, and a request's detokenizer and generator.
WRITER = {
    "token_ids": UPDATE,
    "num_computed_tokens": UPDATE,
    "num_cached_tokens": UPDATE,
    "num_draft_computed": UPDATE,
    "finish_reason": UPDATE,
    "first_scheduled_time": UPDATE,
    "first_token_time": UPDATE,
    "last_token_time": UPDATE,
    "finished_time": UPDATE,
    "error": UPDATE,
    "logprobs": UPDATE,
    "matcher": UPDATE,
    "status": SCHEDULER,
    "arrival_idx": SCHEDULER,
    "num_preemptions": SCHEDULER,
    "block_table": BLOCK_MANAGER,
    "block_hashes": BLOCK_MANAGER,
    "num_hashed_blocks": BLOCK_MANAGER,
}
RECEIVERS = {"seq", "metrics", "request", "victim"}
MUTATORS = {"append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse"}


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


STATE_FIELDS = _fields(Sequence) | _fields(SequenceMetrics) | _fields(Request)


def _receiver(node: ast.expr) -> str | None:
    """The name an attribute is read from: `seq` for seq.x and item.seq.x."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _written_field(target: ast.expr) -> str | None:
    while isinstance(target, ast.Subscript):  # seq.token_ids[i] = ..., del seq.token_ids[i:]
        target = target.value
    is_state = isinstance(target, ast.Attribute) and target.attr in STATE_FIELDS
    if is_state and _receiver(target.value) in RECEIVERS:  # type: ignore[union-attr]
        return target.attr  # type: ignore[union-attr]
    return None


def writes(source: str) -> set[str]:
    """The state fields a module's code writes."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign | ast.Delete):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in MUTATORS):  # fmt: skip
            targets = [node.func.value]
        for target in targets:
            for element in target.elts if isinstance(target, ast.Tuple) else [target]:
                if (name := _written_field(element)) is not None:
                    found.add(name)
    return found


def test_the_detector_sees_each_kind_of_write() -> None:
    code = (
        "seq.status = 1\nitem.seq.num_computed_tokens += 2\nseq.token_ids[3] = 4\n"
        "del seq.block_table[1:]\nrequest.seq.block_hashes.append(5)\n"
        "metrics.first_token_time = 6\nseq.num_preemptions, seq.arrival_idx = 7, 8\n"
        "draft.token_ids.append(9)\nrow.token_ids = []\nprint(seq.token_ids)\n"
    )
    assert writes(code) == {"status", "num_computed_tokens", "token_ids", "block_table",
                            "block_hashes", "first_token_time", "num_preemptions",
                            "arrival_idx"}  # fmt: skip


def test_each_field_of_request_state_has_one_writer() -> None:
    by_field: dict[str, set[str]] = {}
    for module, path in _module_files().items():
        for name in writes(Path(path).read_text()):
            by_field.setdefault(name, set()).add(module)
    assert {name: modules for name, modules in by_field.items()} == {
        name: {module} for name, module in WRITER.items()
    }
