#!/usr/bin/env bash
# The brokers scripts/test.sh runs the tests against: a redis-server and a single-node Kafka on
# the test ports REDIS_PORT and KAFKA_PORT (apart from the 6379 / 9092 a local worker uses).
#   scripts/test_brokers.sh start [redis] [kafka]   stop and empty them, then start (default: both)
#   scripts/test_brokers.sh stop                    stop both and delete their data directories
# They start empty and their data goes with them: Redis and Kafka keep their data directories
# across restarts (AOF, topic logs), so whatever one run left would be what the next
# start_redis.sh or start_kafka.sh on that port serves, and a data set grown over many runs
# makes AOF rewrites fork and fsync large files in the middle of timing-sensitive tests.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${REDIS_PORT:?set REDIS_PORT}" "${KAFKA_PORT:?set KAFKA_PORT}"
export REDIS_DATA_DIR="/tmp/llm-worker-redis-$REDIS_PORT" KAFKA_DATA_DIR="/tmp/llm-worker-kafka-$KAFKA_PORT"

stop() {
  scripts/start_kafka.sh stop >/dev/null 2>&1 || true
  scripts/start_redis.sh stop >/dev/null 2>&1 || true
  rm -rf "$REDIS_DATA_DIR" "$KAFKA_DATA_DIR"
}

start() {
  local brokers=("$@") broker address
  ((${#brokers[@]})) || brokers=(redis kafka)
  stop
  for broker in "${brokers[@]}"; do
    case "$broker" in
      redis|kafka) address="$(scripts/start_"$broker".sh)"; echo "$broker: $address" ;;
      *) echo "test_brokers.sh: unknown broker $broker (redis, kafka)" >&2; exit 2 ;;
    esac
  done
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  *) echo "usage: $0 start [redis] [kafka] | stop" >&2; exit 2 ;;
esac
