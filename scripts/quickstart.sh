#!/usr/bin/env bash
# Install from the lock (scripts/install.sh), then run the example batch through the bundled model
# with the environment's llm-worker (no broker, no GPU needed): examples/prompts.jsonl ->
# results.jsonl. Extra arguments go to run-batch (e.g. --max-num-seqs 8).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
"${LLM_WORKER_VENV:-.venv}/bin/llm-worker" run-batch -i examples/prompts.jsonl -o results.jsonl "$@"
