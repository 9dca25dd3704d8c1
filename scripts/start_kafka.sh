#!/usr/bin/env bash
# Start (or reuse) a single-node KRaft Kafka broker on loopback for tests, benches and local runs.
#   scripts/start_kafka.sh            start, wait until it answers, print the bootstrap address
#   scripts/start_kafka.sh stop       stop the broker started from the same data dir
# Env: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (port+1), KAFKA_DATA_DIR (/tmp/llm-worker-kafka-PORT),
#      KAFKA_JARS_DIR (~/.cache/llm-worker/kafka-jars), KAFKA_PARTITIONS (4, default for new topics).
# Opt-in secured listeners next to the PLAINTEXT one (which stays: readiness and inter-broker use it):
#      KAFKA_SASL_PORT       SASL_PLAINTEXT listener (mechanisms PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)
#      KAFKA_SSL_PORT        SSL listener; KAFKA_SSL_CLIENT_AUTH (none | requested | required) on it
#      KAFKA_SASL_SSL_PORT   SASL_SSL listener (the same mechanisms, over TLS)
#      KAFKA_SASL_USERS      "name:password,..." accepted by every mechanism; SCRAM credentials are
#                            written when the data dir is formatted, so set it on a fresh data dir
#      KAFKA_TLS_DIR         ca.crt, server.crt, server.key as scripts/make_tls_certs.sh writes them
# The jars come from Maven Central through scripts/kafka/pom.xml, so only a JDK 17 and Maven are needed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
port="${KAFKA_PORT:-9092}"
controller_port="${KAFKA_CONTROLLER_PORT:-$((port + 1))}"
data_dir="${KAFKA_DATA_DIR:-/tmp/llm-worker-kafka-$port}"
jars_dir="${KAFKA_JARS_DIR:-$HOME/.cache/llm-worker/kafka-jars}"
num_partitions="${KAFKA_PARTITIONS:-4}"
sasl_port="${KAFKA_SASL_PORT:-}"
ssl_port="${KAFKA_SSL_PORT:-}"
sasl_ssl_port="${KAFKA_SASL_SSL_PORT:-}"
sasl_users="${KAFKA_SASL_USERS:-}"
tls_dir="${KAFKA_TLS_DIR:-}"
ssl_client_auth="${KAFKA_SSL_CLIENT_AUTH:-none}"
pid_file="$data_dir/broker.pid"
log_file="$data_dir/broker.log"
bootstrap="127.0.0.1:$port"
# The readiness probe needs aiokafka: the project's environment has it, a bare python3 may not.
python="${LLM_WORKER_VENV:-$here/../.venv}/bin/python"
[[ -x "$python" ]] || python=python3

broker_answers() {
  # A TCP accept is not readiness: ask for cluster metadata the way the worker will.
  "$python" - "$bootstrap" <<'PY' >/dev/null 2>&1
import asyncio, sys
from aiokafka.admin import AIOKafkaAdminClient
async def main() -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=sys.argv[1], request_timeout_ms=3000)
    await asyncio.wait_for(admin.start(), 5)
    try:
        await asyncio.wait_for(admin.describe_cluster(), 5)
    finally:
        await admin.close()
asyncio.run(main())
PY
}

running_pid() {
  [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null && cat "$pid_file"
}

stop_broker() {
  local pid
  if pid="$(running_pid)"; then
    kill "$pid"
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    echo "stopped kafka (pid $pid)" >&2
  fi
  rm -f "$pid_file"
}

resolve_jars() {
  if [[ ! -f "$jars_dir/.complete" ]]; then
    command -v mvn >/dev/null || { echo "start_kafka.sh: mvn not found (apt-get install maven)" >&2; exit 1; }
    mkdir -p "$jars_dir"
    mvn -q -B -f "$here/kafka/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$jars_dir" -DincludeScope=runtime >"$jars_dir/mvn.log" 2>&1 \
      || { cat "$jars_dir/mvn.log" >&2; exit 1; }
    touch "$jars_dir/.complete"
  fi
}

secured_listeners() {  # NAME:PORT for each opt-in listener that has a port
  if [[ -n "$sasl_port" ]]; then echo "SASL_PLAINTEXT:$sasl_port"; fi
  if [[ -n "$ssl_port" ]]; then echo "SSL:$ssl_port"; fi
  if [[ -n "$sasl_ssl_port" ]]; then echo "SASL_SSL:$sasl_ssl_port"; fi
}

sasl_users_list() { tr ',' '\n' <<<"$sasl_users" | sed '/^$/d'; }

write_security_config() {
  local listener name lower mechanism jaas user
  for listener in $(secured_listeners); do
    name="${listener%%:*}"; lower="$(tr '[:upper:]' '[:lower:]' <<<"$name")"
    if [[ "$name" == SASL_* ]]; then
      [[ -n "$sasl_users" ]] || { echo "start_kafka.sh: $name needs KAFKA_SASL_USERS" >&2; exit 1; }
      jaas="org.apache.kafka.common.security.plain.PlainLoginModule required"
      while IFS= read -r user; do jaas+=" user_${user%%:*}=\"${user#*:}\""; done < <(sasl_users_list)
      echo "listener.name.$lower.plain.sasl.jaas.config=$jaas;"
      for mechanism in scram-sha-256 scram-sha-512; do
        echo "listener.name.$lower.$mechanism.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
      done
    fi
    if [[ "$name" == *SSL ]]; then
      [[ -f "$tls_dir/server.crt" ]] || { echo "start_kafka.sh: $name needs KAFKA_TLS_DIR with server.crt" >&2; exit 1; }
    fi
  done
  echo "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
  if [[ -n "$tls_dir" ]]; then
    # A PEM key store is one file with the key and its certificate chain (Kafka >= 2.7, KIP-651).
    cat "$tls_dir/server.key" "$tls_dir/server.crt" > "$data_dir/server-keystore.pem"
    echo "ssl.keystore.type=PEM"
    echo "ssl.keystore.location=$data_dir/server-keystore.pem"
    echo "ssl.truststore.type=PEM"
    echo "ssl.truststore.location=$tls_dir/ca.crt"
    echo "listener.name.ssl.ssl.client.auth=$ssl_client_auth"
  fi
}

write_config() {
  local listeners="PLAINTEXT://127.0.0.1:$port" protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  local listener
  for listener in $(secured_listeners); do
    listeners+=",${listener%%:*}://127.0.0.1:${listener#*:}"
    protocols+=",${listener%%:*}:${listener%%:*}"
  done
  cat > "$data_dir/server.properties" <<CFG
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=$listeners,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=$listeners
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
log.dirs=$data_dir/logs
num.partitions=$num_partitions
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=2000
CFG
  if [[ -n "$(secured_listeners)" ]]; then write_security_config >> "$data_dir/server.properties"; fi
}

scram_args() {  # kafka-storage format arguments that create every KAFKA_SASL_USERS user for SCRAM
  local user mechanism
  while IFS= read -r user; do
    for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
      printf '%s\n' --add-scram "$mechanism=[name=${user%%:*},password=${user#*:}]"
    done
  done < <(sasl_users_list)
}

start_broker() {
  if running_pid >/dev/null && broker_answers; then echo "$bootstrap"; return; fi
  command -v java >/dev/null || { echo "start_kafka.sh: java not found (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
  resolve_jars
  mkdir -p "$data_dir"
  write_config
  local cp="$jars_dir/*"
  local jvm=(-Xms256m -Xmx512m -Dlog4j2.configurationFile="$here/kafka/log4j2.properties")
  if [[ ! -f "$data_dir/logs/meta.properties" ]]; then
    local cluster_id
    cluster_id="$(java -cp "$cp" "${jvm[@]}" kafka.tools.StorageTool random-uuid)"
    local scram=()
    if [[ -n "$sasl_users" ]]; then mapfile -t scram < <(scram_args); fi
    java -cp "$cp" "${jvm[@]}" kafka.tools.StorageTool format -t "$cluster_id" \
      -c "$data_dir/server.properties" "${scram[@]}" >&2
  fi
  nohup java -cp "$cp" "${jvm[@]}" kafka.Kafka "$data_dir/server.properties" >>"$log_file" 2>&1 &
  echo $! > "$pid_file"
  for _ in $(seq 1 120); do
    if broker_answers; then echo "$bootstrap"; return; fi
    kill -0 "$(cat "$pid_file")" 2>/dev/null || { echo "kafka exited; see $log_file" >&2; tail -20 "$log_file" >&2; exit 1; }
    sleep 0.5
  done
  echo "kafka did not answer on $bootstrap within 60 s; see $log_file" >&2
  exit 1
}

case "${1:-start}" in
  start) start_broker ;;
  stop) stop_broker ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
