#!/usr/bin/env bash
# Install the `docker compose` CLI plugin where only the docker client exists (no Docker engine is
# needed to validate a compose file with `docker compose config`). Built from the Go module proxy,
# since compose's own go.mod rules out `go install`: a throwaway module requires it and builds it.
set -euo pipefail
version="${COMPOSE_VERSION:-v2.40.3}"
plugin_dir="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
if docker compose version >/dev/null 2>&1; then
  docker compose version
  exit 0
fi
command -v go >/dev/null || { echo "go is needed to build docker compose" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init compose-plugin-build >/dev/null 2>&1
echo "building docker compose $version (a few minutes the first time)" >&2
go get "github.com/docker/compose/v2/cmd@$version" >/dev/null 2>&1
mkdir -p "$plugin_dir"
go build -trimpath -o "$plugin_dir/docker-compose" github.com/docker/compose/v2/cmd
docker compose version
