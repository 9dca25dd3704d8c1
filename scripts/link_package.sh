#!/usr/bin/env bash
# Make DEST/llm_worker a tree of links to a checkout's source folders, laid out as the installed
# package: its entries are links to worker/*, plus llm_worker/kernels -> kernels/ and
# llm_worker/schemas -> schemas/ (setuptools' package-dir in pyproject.toml maps them the same
# way). With DEST on PYTHONPATH, `import llm_worker` works without an install: mypy reads it
# (scripts/test.sh), and so does an offline GPU machine's Python (scripts/dev/device_setup.sh).
#   scripts/link_package.sh DEST [CHECKOUT]    CHECKOUT defaults to this script's own
# The tree is made afresh each time (a file added to worker/ since then is linked too).
set -euo pipefail
if (($# < 1 || $# > 2)); then
  echo "usage: $0 DEST [CHECKOUT]" >&2
  exit 2
fi
checkout="$(cd "${2:-$(dirname "$0")/..}" && pwd)"
for folder in worker kernels schemas; do
  [[ -d "$checkout/$folder" ]] || { echo "link_package: no $folder/ in $checkout" >&2; exit 1; }
done
tree="$1/llm_worker"
rm -rf "$tree"
mkdir -p "$tree"
ln -s "$checkout"/worker/* "$checkout/kernels" "$checkout/schemas" "$tree/"
echo "$tree"
