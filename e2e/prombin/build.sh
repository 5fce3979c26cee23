#!/usr/bin/env bash
# Builds the Prometheus server the local rig runs, from the Go module proxy,
# and caches it beside the Kubernetes binaries, keyed by version, so that only
# the first run on a machine pays for the build. e2e/k8sbin/build.sh calls it.
#
#   e2e/prombin/build.sh           # prints the path of the binary on success
#   e2e/prombin/build.sh --cached  # the same if it is built; else exit 1, no build
#
# The pin: Prometheus 3.x is published to the Go module proxy as v0.3MM.P for
# release 3.MM.P (Go would need a /v3 module path for v3 tags), so v0.316.0 is
# Prometheus 3.16.0; the build checks that against the module's VERSION file.
# It is upstream's own go.mod and go.sum (`go install pkg@version`; the module
# has no replace directives), with two build tags that only leave things out:
#   remove_all_sd  drops the cloud/Kubernetes/Consul/... service discoveries;
#                  file_sd and http_sd stay (plugins/minimum.go), and the rig
#                  only uses file_sd_configs.
#   (no builtinassets) the web UI is not compiled in: the HTTP API, /-/ready,
#                  /-/reload and /metrics work without it; the UI pages (/query)
#                  answer 500 "Error opening React index.html".
set -euo pipefail

PROMETHEUS_MODULE=github.com/prometheus/prometheus
PROMETHEUS_VERSION=v0.316.0
TAGS=remove_all_sd  # the cache is keyed by version only: after changing TAGS, delete $DIR

# v0.316.0 -> 3.16.0
minor=$(echo "$PROMETHEUS_VERSION" | cut -d. -f2)
release="$((minor / 100)).$((minor % 100)).$(echo "$PROMETHEUS_VERSION" | cut -d. -f3)"
CACHE_ROOT=${INFERSTACK_CACHE:-$HOME/.cache/inferstack}
DIR="$CACHE_ROOT/bin/prometheus-v$release"

if [ -x "$DIR/prometheus" ]; then echo "$DIR/prometheus"; exit 0; fi
[ "${1:-}" != --cached ] || exit 1

command -v go >/dev/null || { echo "prombin/build.sh: 'go' is not on PATH; install Go >= 1.26.7 (the module's go line)" >&2; exit 1; }
mkdir -p "$DIR"
log="$CACHE_ROOT/build-prometheus-v$release.log"
echo "prombin/build.sh: building prometheus $release ($PROMETHEUS_MODULE@$PROMETHEUS_VERSION) into $DIR (log: $log)" >&2
t0=$SECONDS

fail() { echo "prombin/build.sh: $1; last lines of $log:" >&2; tail -20 "$log" >&2; exit 1; }
tmp=$(mktemp -d "$DIR/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"  # outside any go.mod: nothing here may touch a module's go.sum

# Only the module proxy: the same download `go install` uses, to read VERSION.
src=$(go mod download -json "$PROMETHEUS_MODULE@$PROMETHEUS_VERSION" 2>>"$log" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p') \
  || fail "go mod download $PROMETHEUS_MODULE@$PROMETHEUS_VERSION failed"
[ -n "$src" ] && [ -f "$src/VERSION" ] || fail "no VERSION file in $PROMETHEUS_MODULE@$PROMETHEUS_VERSION"
upstream=$(tr -d '[:space:]' <"$src/VERSION")
[ "$upstream" = "$release" ] || fail "$PROMETHEUS_VERSION is Prometheus $upstream by its VERSION file, not $release"

# `prometheus --version` tells the truth: the ldflags upstream's .promu.yml
# sets. The proxy carries no commit hash, so the revision is the module tag.
vpkg=github.com/prometheus/common/version
ldflags="-s -w -X $vpkg.Version=$release -X $vpkg.Revision=$PROMETHEUS_VERSION -X $vpkg.Branch=HEAD"
ldflags+=" -X $vpkg.BuildUser=$(id -un)@$(hostname) -X $vpkg.BuildDate=$(date -u +%Y%m%d-%H:%M:%S)"

# GOFLAGS is cleared: `go install pkg@version` builds the module as published.
GOFLAGS= CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -tags "$TAGS" -ldflags "$ldflags" \
  "$PROMETHEUS_MODULE/cmd/prometheus@$PROMETHEUS_VERSION" >>"$log" 2>&1 \
  || fail "go install $PROMETHEUS_MODULE/cmd/prometheus@$PROMETHEUS_VERSION failed"
mv "$tmp/prometheus" "$DIR/prometheus"
echo "prombin/build.sh: prometheus built in $((SECONDS - t0))s" >&2
echo "$DIR/prometheus"
