#!/usr/bin/env bash
# Install from the lock (scripts/install.sh --dev), start the real brokers the tests need (Redis
# and a single-node Kafka on loopback, on test ports), run lint, type checks and the tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k parity).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --dev
venv="${LLM_WORKER_VENV:-.venv}"
export PATH="$PWD/$venv/bin:$PATH"  # the environment just built, for scripts and subprocesses
scripts/install_compose_plugin.sh  # `docker compose config` validates compose.yaml in the tests
# Test ports, apart from the 6379 / 9092 a local worker uses; tests/brokers.py reads the same.
export REDIS_PORT="${LLMW_TEST_REDIS_PORT:-16379}" KAFKA_PORT="${LLMW_TEST_KAFKA_PORT:-19092}"
trap 'scripts/test_brokers.sh stop' EXIT  # started empty, stopped with their data deleted
scripts/test_brokers.sh start
"$venv/bin/ruff" check worker kernels schemas tests scripts
# mypy reads packages from folders, not through the editable install's import hook: it gets
# llm_worker as a tree of links to worker/, kernels/ and schemas/.
scripts/link_package.sh .cache/typecheck >/dev/null
"$venv/bin/mypy"
# Two workers (pytest-xdist): the broker tests on one of them in turn (tests/conftest.py), the
# rest beside them. LLMW_TEST_WORKERS=0 runs everything in this process.
"$venv/bin/pytest" -n "${LLMW_TEST_WORKERS:-2}" "$@"
