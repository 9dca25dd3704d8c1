#!/usr/bin/env bash
# Install, start the real brokers the tests need (Redis, Kafka on loopback), run lint and the tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k parity).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
scripts/install_compose_plugin.sh  # `docker compose config` validates compose.yaml in the tests
# The test fixtures attach to these (same scripts, same default ports) or start them themselves.
# The test Redis starts empty each run: a data set left by earlier runs (benches leave hundreds of
# MB) makes its AOF rewrites fork and fsync large files in the middle of timing-sensitive tests.
scripts/start_redis.sh stop >/dev/null 2>&1 || true
rm -rf "/tmp/llm-worker-redis-${REDIS_PORT:-16379}"
echo "redis: $(scripts/start_redis.sh)"
echo "kafka: $(scripts/start_kafka.sh)"
trap 'scripts/start_kafka.sh stop >/dev/null 2>&1 || true; scripts/start_redis.sh stop >/dev/null 2>&1 || true' EXIT
python3 -m ruff check worker kernels schemas tests scripts
python3 -m mypy
python3 -m pytest "$@"
