"""scripts/sim_schedule.py drives the real scheduler without a model: with room for every
sequence at full length nothing is preempted and every token is computed once; with more
sequences admitted than fit, growing sequences evict others and the recomputed tokens are
counted."""

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
INPUT_LEN, OUTPUT_LEN, BLOCK_SIZE, NUM_PROMPTS = 32, 64, 16, 40
FULL_BLOCKS = (INPUT_LEN + OUTPUT_LEN) // BLOCK_SIZE  # 6 a sequence at full length


def _simulate(tmp_path: Path, num_blocks: int, max_num_seqs: int) -> dict[str, float]:
    out = tmp_path / f"sim-{num_blocks}-{max_num_seqs}.json"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "sim_schedule.py"), "--num-blocks",
         str(num_blocks), "--block-size", str(BLOCK_SIZE), "--input-len", str(INPUT_LEN),
         "--output-len", str(OUTPUT_LEN), "--num-prompts", str(NUM_PROMPTS), "--max-num-seqs",
         str(max_num_seqs), "--max-num-batched-tokens", "256", "--no-progress",
         "--output-json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "preemptions:" in done.stdout
    return json.loads(out.read_text())["summary"]


def test_room_for_all_at_full_length_computes_every_token_once(tmp_path: Path) -> None:
    summary = _simulate(tmp_path, num_blocks=8 * FULL_BLOCKS, max_num_seqs=8)
    assert summary["finished"] == NUM_PROMPTS and summary["preemptions"] == 0
    assert summary["most_preemptions_of_one_sequence"] == 0
    assert summary["tokens_computed"] == NUM_PROMPTS * (INPUT_LEN + OUTPUT_LEN - 1)
    assert summary["max_decoding_per_step"] == 8


def test_admitting_more_than_fit_preempts_and_counts_the_recompute(tmp_path: Path) -> None:
    summary = _simulate(tmp_path, num_blocks=8 * FULL_BLOCKS, max_num_seqs=16)
    assert summary["finished"] == NUM_PROMPTS and summary["preemptions"] > 0
    assert 1 <= summary["most_preemptions_of_one_sequence"] <= summary["preemptions"]
    again = summary["tokens_computed"] - NUM_PROMPTS * (INPUT_LEN + OUTPUT_LEN - 1)
    assert again == summary["tokens_computed_again"] > 0
    # prompts of 2 blocks: 16 are admitted at once, more than the 8 that fit at full length
    assert summary["max_decoding_per_step"] > 8


def test_a_cache_smaller_than_one_sequence_is_refused_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "sim_schedule.py"), "--num-blocks", "2",
         "--input-len", str(INPUT_LEN), "--output-len", str(OUTPUT_LEN)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "cannot hold one sequence" in done.stderr
