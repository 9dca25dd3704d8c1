#!/usr/bin/env bash
# Start (or reuse) a redis-server on loopback for tests, benches and local runs.
#   scripts/start_redis.sh            start, wait for PONG, print the redis:// URL
#   scripts/start_redis.sh stop       stop the server started on the same port
# Env: REDIS_PORT (6379), REDIS_PASSWORD (unset: no AUTH), REDIS_DATA_DIR (/tmp/llm-worker-redis-PORT),
#      REDIS_TLS_DIR (unset: plain TCP; set: TLS only on REDIS_PORT with ca.crt, server.crt and
#      server.key from that folder, as scripts/make_tls_certs.sh writes them; the URL is rediss://),
#      REDIS_TLS_AUTH_CLIENTS (no: mutual TLS off; yes: clients must show a certificate the CA signed).
# AOF is on so a restarted server keeps the job stream, its consumer group and pending entries.
set -euo pipefail

port="${REDIS_PORT:-6379}"
password="${REDIS_PASSWORD:-}"
data_dir="${REDIS_DATA_DIR:-/tmp/llm-worker-redis-$port}"
tls_dir="${REDIS_TLS_DIR:-}"
tls_auth_clients="${REDIS_TLS_AUTH_CLIENTS:-no}"
pid_file="$data_dir/redis.pid"

cli() {
  local args=(-h 127.0.0.1 -p "$port")
  if [[ -n "$tls_dir" ]]; then
    args+=(--tls --cacert "$tls_dir/ca.crt")
    if [[ -f "$tls_dir/client.crt" ]]; then args+=(--cert "$tls_dir/client.crt" --key "$tls_dir/client.key"); fi
  fi
  if [[ -n "$password" ]]; then
    REDISCLI_AUTH="$password" timeout "${reply_timeout_s:-0}" redis-cli "${args[@]}" "$@"
  else
    timeout "${reply_timeout_s:-0}" redis-cli "${args[@]}" "$@"
  fi
}

# redis-cli exits 0 on NOAUTH and LOADING replies, so readiness is the literal PONG; a listener
# that accepts but never answers (not a Redis, or a stuck one) must not stall the start.
answers_pong() { local reply_timeout_s=2; [[ "$(cli ping 2>/dev/null)" == "PONG" ]]; }

url() {
  local scheme=redis
  if [[ -n "$tls_dir" ]]; then scheme=rediss; fi
  if [[ -n "$password" ]]; then echo "$scheme://:$password@127.0.0.1:$port/0"; else echo "$scheme://127.0.0.1:$port/0"; fi
}

ensure_installed() {
  if ! command -v redis-server >/dev/null; then
    echo "installing redis-server with apt-get" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >&2
  fi
}

start_server() {
  ensure_installed
  if answers_pong; then url; return; fi
  mkdir -p "$data_dir"
  local args=(--bind 127.0.0.1 --daemonize yes --pidfile "$pid_file"
              --dir "$data_dir" --logfile "$data_dir/redis.log"
              --appendonly yes --appendfsync everysec --save "")
  if [[ -n "$tls_dir" ]]; then
    # TLS only: a plain port next to it would let a misconfigured client skip encryption unnoticed.
    args+=(--port 0 --tls-port "$port" --tls-cert-file "$tls_dir/server.crt"
           --tls-key-file "$tls_dir/server.key" --tls-ca-cert-file "$tls_dir/ca.crt"
           --tls-auth-clients "$tls_auth_clients")
  else
    args+=(--port "$port")
  fi
  if [[ -n "$password" ]]; then args+=(--requirepass "$password"); fi
  redis-server "${args[@]}"
  for _ in $(seq 1 100); do
    if answers_pong; then url; return; fi
    sleep 0.1
  done
  echo "redis did not answer PONG on 127.0.0.1:$port; see $data_dir/redis.log" >&2
  exit 1
}

stop_server() {
  if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    local pid; pid="$(cat "$pid_file")"
    kill "$pid"  # SIGTERM: redis fsyncs the AOF before it exits
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "stopped redis (pid $pid)" >&2
  fi
}

case "${1:-start}" in
  start) start_server ;;
  stop) stop_server ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
