"""`run-batch` on a random-weight model (token-id prompts): duplicate custom_ids are refused
before any model loads unless allowed, and a refused line carries one error code in the log and
in its output line."""

import json
import logging
import re
from pathlib import Path

import pytest

from llm_worker.cli import main

DUMMY = ["--model", "tiny-llama", "--load-format", "dummy", "--no-progress"]


def _line(custom_id: str, **body: object) -> str:
    body = {"prompt": [1, 2, 3], "max_tokens": 2, **body}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": body}
    )


def _run(tmp_path: Path, lines: list[str], *flags: str) -> tuple[int, Path]:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(lines) + "\n")
    return main(["run-batch", "-i", str(src), "-o", str(dst), *DUMMY, *flags]), dst


def test_duplicate_custom_ids_are_refused_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [_line("a"), "{not json", _line("b"), "", _line("a"), _line("b")]
    code, dst = _run(tmp_path, lines, "--model", "no-such-model")
    assert code == 2 and not dst.exists()
    assert capsys.readouterr().err.strip() == (
        "llm-worker run-batch: error: custom_id 'a' is on line 1 and on line 5; a batch needs "
        "unique custom_ids to match results to requests (--allow-duplicate-ids runs them anyway)"
    )


def test_allowed_duplicates_each_get_their_line(tmp_path: Path) -> None:
    code, dst = _run(tmp_path, [_line("a"), _line("a", max_tokens=3)], "--allow-duplicate-ids")
    assert code == 0
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [o["custom_id"] for o in out] == ["a", "a"]
    tokens = sorted(o["response"]["body"]["usage"]["completion_tokens"] for o in out)
    assert tokens == [2, 3]


def test_a_missing_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.jsonl"
    assert main(["run-batch", "-i", str(missing), "-o", str(tmp_path / "o"), *DUMMY]) == 2
    assert capsys.readouterr().err.strip() == (
        f"llm-worker run-batch: error: {missing}: no such file"
    )


def test_the_log_and_the_output_line_give_one_code(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused by the line parser (not JSON, bad field) and by the service (unknown model):
    each output line's error.code is the code its `refusing` log line names. The engine's own
    refusal (prompt too long) reaches the output line only."""
    lines = [
        _line("ok"),
        "{not json",
        _line("negative", max_tokens=-1),
        _line("long", prompt=list(range(1, 200))),
        _line("other-model", model="gpt-9"),
    ]
    with caplog.at_level(logging.WARNING):
        code, dst = _run(tmp_path, lines, "--max-model-len", "64")
    assert code == 0
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert len(out) == len(lines)
    logged = {}
    for record in caplog.records:
        found = re.match(r"refusing line (\d+): ([a-z_]+): ", record.getMessage())
        if found:
            logged[int(found.group(1))] = found.group(2)
    by_line = {2: None, 3: "negative", 5: "other-model"}
    codes = {o["custom_id"]: o["error"]["code"] for o in out if o["error"]}
    assert codes == {
        None: "malformed",
        "negative": "invalid_request",
        "long": "prompt_too_long",
        "other-model": "unknown_model",
    }
    assert logged == {line_no: codes[custom_id] for line_no, custom_id in by_line.items()}
