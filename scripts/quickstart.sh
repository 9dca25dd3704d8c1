#!/usr/bin/env bash
# Install, then run the example batch through the bundled model on this machine (no broker, no GPU
# needed): examples/prompts.jsonl -> results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
llm-worker run-batch -i examples/prompts.jsonl -o results.jsonl "$@"
