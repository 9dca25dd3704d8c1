"""`llm-worker run-batch` end to end on the bundled model: good lines finish, bad lines explain."""

import json
from pathlib import Path

import pytest

from llm_worker.cli import main


def _line(custom_id: str, body: dict, url: str = "/v1/completions") -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


GOOD = [
    _line(
        "ok-1",
        {
            "model": "smollm2",
            "prompt": "The capital of France is",
            "max_tokens": 8,
            "temperature": 0,
        },
    ),
    _line(
        "ok-2",
        {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8},
        url="/v1/chat/completions",
    ),
    _line("ok-3", {"prompt": "1, 2, 3, 4,", "max_tokens": 12, "temperature": 0, "stop": [" 7"]}),
]
BAD = {
    "malformed": "{this is not json",
    "unknown-field": _line("unknown-field", {"prompt": "hi", "max_tokens": 4, "colour": "red"}),
    "too-long": _line("too-long", {"prompt": "word " * 200, "max_tokens": 4}),
    "negative-max-tokens": _line("negative-max-tokens", {"prompt": "hi", "max_tokens": -5}),
    "negative-temperature": _line("negative-temperature", {"prompt": "hi", "temperature": -0.5}),
    "empty-prompt": _line("empty-prompt", {"prompt": "", "max_tokens": 4}),
    "unknown-model": _line("unknown-model", {"model": "gpt-9", "prompt": "hi", "max_tokens": 4}),
}
EXPECTED_MESSAGE = {
    "unknown-field": "colour",
    "too-long": "max_model_len",
    "negative-max-tokens": "max_tokens",
    "negative-temperature": "temperature",
    "empty-prompt": "prompt must not be empty",
    "unknown-model": "gpt-9",
}


@pytest.mark.slow
def test_bad_lines_get_error_lines_and_good_lines_complete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [GOOD[0], *BAD.values(), GOOD[1], "", GOOD[2]]
    src.write_text("\n".join(lines) + "\n")
    assert (
        main(
            ["run-batch", "-i", str(src), "-o", str(dst), "--max-model-len", "128", "--no-progress"]
        )
        == 0
    )
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert len(out) == len(GOOD) + len(BAD)
    by_id = {o["custom_id"]: o for o in out if o["custom_id"]}

    for custom_id in ("ok-1", "ok-2", "ok-3"):
        record = by_id[custom_id]
        assert record["error"] is None
        body = record["response"]["body"]
        assert record["response"]["status_code"] == 200
        assert body["usage"]["completion_tokens"] > 0
    assert by_id["ok-1"]["response"]["body"]["choices"][0]["text"].startswith(" Paris")
    assert by_id["ok-2"]["response"]["body"]["object"] == "chat.completion"
    ok3 = by_id["ok-3"]["response"]["body"]["choices"][0]
    assert ok3["finish_reason"] == "stop" and " 7" not in ok3["text"]

    malformed = [o for o in out if o["custom_id"] is None]
    assert len(malformed) == 1 and malformed[0]["error"]["code"] == "malformed"
    for custom_id, fragment in EXPECTED_MESSAGE.items():
        error = by_id[custom_id]["error"]
        assert by_id[custom_id]["response"] is None
        assert fragment in error["message"], (custom_id, error)
    assert by_id["too-long"]["error"]["code"] == "prompt_too_long"
    assert by_id["unknown-model"]["error"]["code"] == "unknown_model"
    summary = capsys.readouterr().out
    assert "Throughput:" in summary and f"({len(BAD)} failed)" in summary


@pytest.mark.slow
def test_examples_file_runs_and_input_is_read_lazily(tmp_path: Path) -> None:
    """The shipped examples complete; the reader never runs ahead of the in-flight cap."""
    from llm_worker.config import EngineSettings
    from llm_worker.engine.llm_engine import LLMEngine
    from llm_worker.run_batch import run_batch

    engine = LLMEngine.from_settings(EngineSettings(max_num_seqs=4))
    src = Path(__file__).resolve().parents[2] / "examples" / "prompts.jsonl"
    lines = src.read_text().splitlines()[:10]
    small = tmp_path / "in.jsonl"
    small.write_text("\n".join(lines) + "\n")
    peak = 0
    original_step = engine.step

    def watching_step():
        nonlocal peak
        peak = max(peak, engine.num_unfinished_requests())
        return original_step()

    engine.step = watching_step  # type: ignore[method-assign]
    summary = run_batch(
        engine, "smollm2", small, tmp_path / "out.jsonl", max_in_flight=3, show_progress=False
    )
    assert summary.num_lines == 10 and summary.num_failed == 0
    assert peak <= 3
