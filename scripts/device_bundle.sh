#!/usr/bin/env bash
# Gather here, with network, what a lent GPU machine lacks for the worker, the service, the queue
# tests, scripts/bench_scale.py and scripts/bench_spec.py. That machine is offline, runs x86-64
# Python 3.12 and already has torch, triton, numpy, xxhash, tqdm, prometheus-client, transformers,
# pytest (DEVICE_PACKAGES below); scripts/device_setup.sh installs the bundle there.
#   scripts/device_bundle.sh                     .whl/: the missing wheels (cp312, manylinux x86_64)
#                                                .deb/: Debian's redis-server and the libraries it
#                                                links; then the closure and size checks
#   scripts/device_bundle.sh --kafka             also .kafka/kafka-runtime.tar.xz: a jlinked JDK 17
#                                                runtime and the broker's jars (about 32 MiB)
#   scripts/device_bundle.sh --validate [--bench]
#                                                then check the bundle here (see validate() below);
#                                                --bench adds bench_scale.py CPU runs through it
#   --no-download                                fetch nothing; check (and validate) what is there
# What is already in .whl/, .deb/ or .kafka/ is kept: delete a file to fetch it again. One version of
# each wheel: a second one would stop the install there.
# Env: BUNDLE_LIMIT_MIB (40) for .whl + .deb; TRAVEL_LIMIT_MIB (60) for .whl + .deb + .kafka + the
#   working tree, under the 64 MiB a device call carries; KAFKA_JARS_DIR
#   (~/.cache/llm-worker/kafka-jars, as scripts/start_kafka.sh); JLINK_JDK (a JDK 17 with jmods/).
# On the device: run(command="source scripts/device_setup.sh && python3 scripts/bench_scale.py ...",
#   carry=[".whl", ".deb"]) and ".kafka" added for --queue kafka (docs/benchmarks.md, issue 8).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

kafka=0 validate=0 bench=0 download=1
for arg in "$@"; do
  case "$arg" in
    --kafka) kafka=1 ;;
    --validate) validate=1 ;;
    --bench) bench=1 ;;
    --no-download) download=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--kafka] [--validate [--bench]] [--no-download]" >&2; exit 2 ;;
  esac
done

bundle_limit_mib="${BUNDLE_LIMIT_MIB:-40}"
travel_limit_mib="${TRAVEL_LIMIT_MIB:-60}"
kafka_tar=".kafka/kafka-runtime.tar.xz"

# Pinned to the versions the development machine's tests pass with. Needs already on the device
# (numpy, packaging, prometheus-client, pytest, pyyaml, requests, tqdm) are not carried.
WHEELS=(
  redis==8.1.0
  aiokafka==0.14.0
  async-timeout==5.0.1          # aiokafka needs it unconditionally
  pydantic==2.13.4
  pydantic-core==2.46.4
  pydantic-settings==2.14.1
  python-dotenv==1.2.2
  typing-inspection==0.4.2
  annotated-types==0.8.0
  typing-extensions==4.16.0     # pydantic needs >= 4.14.1; the device's own version is not known
  opentelemetry-api==1.45.2
  opentelemetry-sdk==1.45.2
  opentelemetry-semantic-conventions==0.66b2
  opentelemetry-exporter-prometheus==0.66b2  # worker/telemetry.py's PrometheusMetricReader
  gguf==0.19.0                  # transformers reads the bundled SmolLM2 GGUF with it
  hypothesis==6.151.0           # the tests (the device has its own versions of these three)
  pytest-timeout==2.4.0
  sortedcontainers==2.4.0
)
# redis-server and redis-cli, and every library they link but libc, libm, libstdc++ and libgcc_s
# (the GPU image has those, newer): the wrappers of device_setup.sh put them on LD_LIBRARY_PATH.
DEBS=(redis-server redis-tools libjemalloc2 liblzf1 libatomic1 libssl3 libsystemd0 libcap2
      libgcrypt20 libgpg-error0 liblzma5 libzstd1 liblz4-1)
# The device image's Python packages (KINDS.md of the device tool, read 2026-11-17).
export DEVICE_PACKAGES="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc
anyio attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch
grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime
onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"
# Kafka 4.1's broker, its tools and log4j need these modules (jdeps on the jars; jdk.crypto.ec for
# the TLS listeners, jdk.management for the JVM's own metrics).
JRE_MODULES="java.base,java.compiler,java.desktop,java.logging,java.management,java.naming,java.rmi,\
java.scripting,java.security.jgss,java.security.sasl,java.sql,java.xml,jdk.unsupported,\
jdk.management,jdk.crypto.ec,jdk.zipfs"

log() { echo "device_bundle: $*" >&2; }
die() { echo "device_bundle: ERROR: $*" >&2; exit 1; }
norm() { tr 'A-Z_.' 'a-z--' <<<"$1"; }  # a project name as pip compares it
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
bytes_of() { if [[ -e "$1" ]]; then du -sb "$1" | cut -f1; else echo 0; fi; }

ensure_excluded() {  # keep the bundle out of git (.gitignore has these too; this survives edits)
  local exclude=.git/info/exclude entry
  [[ -d .git ]] || return 0
  for entry in /.whl/ /.deb/ /.kafka/; do
    grep -qxF "$entry" "$exclude" 2>/dev/null || echo "$entry" >> "$exclude"
  done
}

fetch_wheels() {
  mkdir -p .whl
  local spec name have w
  for spec in "${WHEELS[@]}"; do
    name="$(norm "${spec%%==*}")"
    have=""
    for w in .whl/*.whl; do
      if [[ -e "$w" && "$(norm "$(basename "$w" | cut -d- -f1)")" == "$name" ]]; then
        have+="$(basename "$w")"
      fi
    done
    if [[ -n "$have" ]]; then
      [[ "$have" == *"-${spec#*==}-"* ]] || log "keeping $have (pinned: $spec)"
      continue
    fi
    log "downloading $spec"
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$spec" \
      || die "pip download $spec failed"
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

check_wheels() {  # one version each, tags that cp312 manylinux x86_64 takes, and a closed closure
  python3 - .whl <<'PY'
import email.parser, os, re, sys, zipfile
try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.version import Version
except ImportError:
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import Version

def norm(name): return re.sub(r"[-_.]+", "-", name).lower()

env = default_environment()
env.update(python_version="3.12", python_full_version="3.12.3", implementation_name="cpython",
           implementation_version="3.12.3", platform_python_implementation="CPython",
           sys_platform="linux", platform_system="Linux", platform_machine="x86_64", os_name="posix",
           extra="")
device = {norm(n) for n in os.environ["DEVICE_PACKAGES"].split()}
folder = sys.argv[1]
wheels, errors = {}, []
for file in sorted(os.listdir(folder)):
    if not file.endswith(".whl"):
        continue
    name, version, *_, py_tag, abi_tag, plat_tag = file[:-4].split("-")
    if norm(name) in wheels:
        errors.append(f"two versions of {name}: {wheels[norm(name)][0]} and {version}")
    if not (set(py_tag.split(".")) & {"py3", "cp312", "py312"} and
            set(abi_tag.split(".")) & {"none", "abi3", "cp312"} and
            (plat_tag == "any" or any(p.startswith("manylinux") and p.endswith("x86_64")
                                      for p in plat_tag.split(".")))):
        errors.append(f"{file}: not for cp312 manylinux x86_64")
    with zipfile.ZipFile(os.path.join(folder, file)) as whl:
        meta_name = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(whl.read(meta_name).decode())
    wheels[norm(name)] = (version, meta)
for key, (version, meta) in wheels.items():
    needs_python = meta.get("Requires-Python")
    if needs_python and not Requirement(f"x{needs_python}").specifier.contains("3.12.3"):
        errors.append(f"{key} {version}: Requires-Python {needs_python}")
    for line in meta.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        dep = norm(req.name)
        if dep in wheels:
            if not req.specifier.contains(Version(wheels[dep][0]), prereleases=True):
                errors.append(f"{key} needs {req}; .whl has {wheels[dep][0]}")
        elif dep not in device:
            errors.append(f"{key} needs {req}: neither in .whl nor on the device")
for error in errors:
    print(f"device_bundle: ERROR: {error}", file=sys.stderr)
if errors:
    sys.exit(1)
print(f"device_bundle: {len(wheels)} wheels, one version each, closure complete "
      "(with the device's own packages)", file=sys.stderr)
PY
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
  local whl deb kaf tree
  whl="$(bytes_of .whl)"; deb="$(bytes_of .deb)"; kaf="$(bytes_of .kafka)"
  tree="$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)"
  log "sizes: .whl $(mib "$whl") MiB ($(ls .whl | wc -l) wheels), .deb $(mib "$deb") MiB ($(ls .deb | wc -l) debs), .kafka $(mib "$kaf") MiB, working tree $(mib "$tree") MiB"
  log "a call carrying .whl and .deb sends $(mib $((whl + deb + tree))) MiB; with .kafka $(mib $((whl + deb + kaf + tree))) MiB (the limit is 64)"
  ((whl + deb <= bundle_limit_mib * 1048576)) \
    || die ".whl + .deb is $(mib $((whl + deb))) MiB, over BUNDLE_LIMIT_MIB=$bundle_limit_mib"
  ((whl + deb + kaf + tree <= travel_limit_mib * 1048576)) \
    || die ".whl + .deb + .kafka + the tree is $(mib $((whl + deb + kaf + tree))) MiB, over TRAVEL_LIMIT_MIB=$travel_limit_mib"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# A sitecustomize that makes this machine's Python look like the device's: a top-level import
# that would come from this machine's site-packages fails unless the device image has that
# distribution too, so only the bundle, the repo and DEVICE_PACKAGES are used. Blocked names go
# to $DEVICE_GUARD_LOG (optional imports such as hiredis are expected there).
write_guard() {
  mkdir -p "$1"
  cat > "$1/sitecustomize.py" <<'PY'
import importlib.machinery, importlib.metadata, os, re, site, sys

_norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
_allowed = {_norm(n) for n in os.environ.get("DEVICE_PACKAGES", "").split()}
_system = tuple(os.path.realpath(p) for p in site.getsitepackages() + [site.getusersitepackages()])
_dists = importlib.metadata.packages_distributions()

class DeviceGuard:
    def find_spec(self, name, path=None, target=None):
        if path is not None or name in sys.stdlib_module_names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name)
        if spec is None:
            return None
        where = spec.origin if spec.origin not in (None, "namespace") else next(
            iter(spec.submodule_search_locations or []), "")
        if not os.path.realpath(where or "").startswith(_system):
            return None
        dists = _dists.get(name, [])
        if not dists or any(_norm(d) in _allowed for d in dists):
            return None
        log = os.environ.get("DEVICE_GUARD_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{name} ({', '.join(dists)})\n")
        raise ModuleNotFoundError(f"No module named {name!r} (not on the device)", name=name)

sys.meta_path.insert(0, DeviceGuard())
PY
}

# The checks, against temp folders: the bundle installed by device_setup.sh (the cp311 builds of
# its compiled wheels where this Python is 3.11), redis-server from the unpacked debs started by
# scripts/start_redis.sh, the Kafka runtime's broker by scripts/start_kafka.sh, imports and a
# round trip through each broker from a Python that sees only the bundle, the repo and the device's
# own packages; --bench then runs scripts/bench_scale.py's CPU functional check through both.
validate() {
  local tmp; tmp="$(mktemp -d /tmp/device-validate.XXXXXX)"
  # Ports of our own brokers, then of those bench_scale.py starts itself (in their default
  # data folders, as on the device).
  local redis_port kafka_port bench_redis_port bench_kafka_port
  redis_port="$(free_port)"; kafka_port="$(free_port)"
  bench_redis_port="$(free_port)"; bench_kafka_port="$(free_port)"
  # shellcheck disable=SC2064
  trap "REDIS_PORT=$redis_port REDIS_DATA_DIR=$tmp/redis bash scripts/start_redis.sh stop >/dev/null 2>&1 || true
        KAFKA_PORT=$kafka_port KAFKA_DATA_DIR=$tmp/kafka-data bash scripts/start_kafka.sh stop >/dev/null 2>&1 || true
        REDIS_PORT=$bench_redis_port bash scripts/start_redis.sh stop >/dev/null 2>&1 || true
        KAFKA_PORT=$bench_kafka_port bash scripts/start_kafka.sh stop >/dev/null 2>&1 || true
        rm -rf '$tmp' /tmp/llm-worker-redis-$bench_redis_port /tmp/llm-worker-kafka-$bench_kafka_port" EXIT

  local wheels=.whl here
  here="$(python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
  if [[ "$here" != 312 ]]; then
    wheels="$tmp/wheels"; mkdir -p "$wheels"
    local w name version
    for w in .whl/*.whl; do
      if [[ "$w" == *-none-any.whl ]]; then cp "$w" "$wheels/"; continue; fi
      name="$(basename "$w" | cut -d- -f1)"; version="$(basename "$w" | cut -d- -f2)"
      log "validate: cp$here build of $name $version in place of $(basename "$w") (here only)"
      python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        -d "$wheels" "$name==$version" || die "no cp$here wheel of $name $version"
    done
  fi

  export DEVICE_WHEELS="$wheels" DEVICE_SITE="$tmp/site" DEVICE_DEBROOT="$tmp/debroot" \
         DEVICE_KAFKA="$tmp/kafka" DEVICE_GUARD_LOG="$tmp/guard.log"
  write_guard "$tmp/guard"
  local env_lines
  env_lines="$(PYTHONPATH="$tmp/guard" bash scripts/device_setup.sh)" || die "device_setup.sh failed"
  log "validate: device_setup.sh a second time (must find everything in place):"
  PYTHONPATH="$tmp/guard" bash scripts/device_setup.sh >/dev/null
  (
    eval "$env_lines"  # PYTHONPATH keeps the guard: it was set when device_setup.sh ran
    [[ "$(command -v redis-server)" == "$tmp/debroot/bin/redis-server" ]] \
      || die "redis-server on PATH is $(command -v redis-server), not the carried one"
    local libs
    libs="$(LD_LIBRARY_PATH="$DEVICE_DEBROOT_LIBS" ldd "$(readlink -f "$tmp/debroot/usr/bin/redis-server")")"
    if grep -q 'not found' <<<"$libs"; then die "redis-server: $(grep 'not found' <<<"$libs")"; fi
    local outside
    outside="$(grep '=>' <<<"$libs" | grep -v "$tmp/debroot" \
      | grep -vE '^\s*(libc|libm|libstdc\+\+|libgcc_s)\.so' || true)"
    [[ -z "$outside" ]] || die "redis-server takes these from this machine, not the debs: $outside"
    log "validate: redis-server links only the carried libraries (and libc, libm, libstdc++, libgcc_s)"

    local url
    url="$(REDIS_PORT="$redis_port" REDIS_DATA_DIR="$tmp/redis" bash scripts/start_redis.sh)"
    local pid; pid="$(cat "$tmp/redis/redis.pid")"
    [[ "$(readlink -f "/proc/$pid/exe")" == "$tmp/debroot/"* ]] || die "the redis-server running is not the carried one"
    log "validate: carried redis-server answers at $url (pid $pid)"

    local bootstrap=""
    if [[ -n "${KAFKA_JARS_DIR:-}" ]]; then
      [[ "$(command -v java)" == "$tmp/kafka/jre/bin/java" ]] || die "java on PATH is $(command -v java)"
      bootstrap="$(KAFKA_PORT="$kafka_port" KAFKA_DATA_DIR="$tmp/kafka-data" bash scripts/start_kafka.sh)"
      pid="$(cat "$tmp/kafka-data/broker.pid")"
      [[ "$(readlink -f "/proc/$pid/exe")" == "$tmp/kafka/jre/"* ]] || die "the broker running is not on the carried JRE"
      log "validate: Kafka broker on the carried JRE and jars answers at $bootstrap (pid $pid)"
    else
      log "validate: no $kafka_tar, Kafka not checked (scripts/device_bundle.sh --kafka)"
    fi

    REDIS_URL="$url" KAFKA_BOOTSTRAP="$bootstrap" REPO="$repo" SITE="$tmp/site" \
      python3 - <<'PY' || die "the Python check failed"
import asyncio, importlib.metadata, os, subprocess, sys, sysconfig

sys.path.insert(0, os.path.join(os.environ["REPO"], "scripts"))
import llm_worker.cli, worker.queues.kafka, worker.service, worker.telemetry  # noqa: E401,F401
import scale_checks, scale_fleet, scale_runs  # noqa: E401,F401
from redis.asyncio import Redis
from llm_worker.telemetry import build_telemetry

stdlib = (os.path.realpath(sysconfig.get_paths()["stdlib"]),
          os.path.realpath(sysconfig.get_paths()["platstdlib"]))
site_dir, repo = os.path.realpath(os.environ["SITE"]), os.path.realpath(os.environ["REPO"])
where = {"bundle": 0, "repo": 0, "device packages": 0, "stdlib": 0}
for module in list(sys.modules.values()):
    path = os.path.realpath(getattr(module, "__file__", None) or "/")
    key = ("bundle" if path.startswith(site_dir) else "repo" if path.startswith(repo) else
           "stdlib" if path.startswith(stdlib) and "-packages" not in path else
           "device packages" if "-packages" in path else None)
    if key:
        where[key] += 1
print("device_bundle: validate: modules loaded from", where, file=sys.stderr)
for name in ("redis", "aiokafka", "pydantic", "pydantic_core", "opentelemetry.sdk.metrics"):
    assert os.path.realpath(sys.modules[name].__file__).startswith(site_dir), name
assert os.path.realpath(worker.service.__file__).startswith(repo)
build_telemetry("validate", "none", "redis").shutdown()

async def round_trips() -> None:
    client = Redis.from_url(os.environ["REDIS_URL"])
    entry = await client.xadd("device-validate", {"k": "v"})
    assert (await client.xrange("device-validate"))[0][0] == entry
    await client.aclose()
    if os.environ["KAFKA_BOOTSTRAP"]:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
        producer = AIOKafkaProducer(bootstrap_servers=os.environ["KAFKA_BOOTSTRAP"])
        await producer.start()
        await producer.send_and_wait("device-validate", b"hello")
        await producer.stop()
        consumer = AIOKafkaConsumer("device-validate", auto_offset_reset="earliest",
                                    bootstrap_servers=os.environ["KAFKA_BOOTSTRAP"])
        await consumer.start()
        record = await asyncio.wait_for(consumer.getone(), 30)
        await consumer.stop()
        assert record.value == b"hello"

asyncio.run(round_trips())
subprocess.run([sys.executable, "-m", "worker", "serve", "--help"], check=True,
               stdout=subprocess.DEVNULL)
print("device_bundle: validate: imports, telemetry, Redis XADD/XRANGE"
      + (", Kafka produce/consume" if os.environ["KAFKA_BOOTSTRAP"] else "")
      + " and `python -m worker serve --help` passed", file=sys.stderr)
PY

    if ((bench)); then
      local queue args=(--allow-cpu --model tiny-llama --workers 1,2 --num-jobs 40 --input-len 16
                        --output-len 8 --max-in-flight 16 --warmup-jobs 8 --no-progress
                        --redis-port "$bench_redis_port" --kafka-port "$bench_kafka_port")
      for queue in redis ${bootstrap:+kafka}; do
        log "validate: bench_scale.py --queue $queue (CPU functional check)"
        python3 scripts/bench_scale.py --queue "$queue" "${args[@]}" --log-dir "$tmp/logs-$queue" \
          --json-out "$tmp/scale-$queue.json" >&2 || die "bench_scale.py --queue $queue failed"
      done
    fi
  )
  log "validate: imports blocked as absent on the device: $(sort -u "$tmp/guard.log" 2>/dev/null | tr '\n' ' ')"
  log "validate: all passed"
}

ensure_excluded
if ((download)); then
  fetch_wheels
  fetch_debs
fi
if ((kafka)); then build_kafka_runtime; fi
check_wheels
check_debs
report_sizes
if ((validate)); then validate; fi
