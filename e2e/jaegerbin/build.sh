#!/usr/bin/env bash
# Builds Jaeger v2's all-in-one binary (github.com/jaegertracing/jaeger/cmd/jaeger,
# an OpenTelemetry Collector distribution with Jaeger's storage and query
# extensions), the trace backend the tracing tests send spans to, from the Go
# module proxy, and caches it beside the Kubernetes binaries, keyed by version.
# e2e/jaeger.py runs it.
#
#   e2e/jaegerbin/build.sh           # prints the path of the binary on success
#   e2e/jaegerbin/build.sh --cached  # the same if it is built; else exit 1, no build
#
# The pin: the module is tagged with Jaeger's v1 numbers (v1.75.0) although
# the binary is Jaeger v2; that tag is the approved release. `go install
# pkg@version` refuses the module (its go.mod has a replace directive), so the
# module zip from the proxy is copied to a writable directory and built there
# with its own go.mod and go.sum, as e2e/argobin/build.sh does. Its go line
# (1.24.6) is older than the rig's Go, so no other toolchain is fetched;
# JAEGER_GOTOOLCHAIN can still ask for one (the approved one is go1.27.3).
# The Jaeger UI is not compiled in (the module carries no built UI assets):
# the query HTTP API (/api/..., /api/v3/...) works; the UI page is a placeholder.
# Nothing of Jaeger's is committed to this repository; only this script.
set -euo pipefail

JAEGER_MODULE=github.com/jaegertracing/jaeger
JAEGER_VERSION=v1.75.0
[ -z "${JAEGER_GOTOOLCHAIN:-}" ] || export GOTOOLCHAIN=$JAEGER_GOTOOLCHAIN
CACHE_ROOT=${INFERSTACK_CACHE:-$HOME/.cache/inferstack}
DIR="$CACHE_ROOT/bin/jaeger-$JAEGER_VERSION"
SRC="$CACHE_ROOT/build-jaeger-$JAEGER_VERSION"

if [ -x "$DIR/jaeger" ]; then echo "$DIR/jaeger"; exit 0; fi
[ "${1:-}" != --cached ] || exit 1

command -v go >/dev/null || { echo "jaegerbin/build.sh: 'go' is not on PATH; install Go >= 1.24.6 (the module's go line)" >&2; exit 1; }
mkdir -p "$DIR"
log="$CACHE_ROOT/build-jaeger-$JAEGER_VERSION.log"
echo "jaegerbin/build.sh: building jaeger ($JAEGER_MODULE/cmd/jaeger@$JAEGER_VERSION) into $DIR (log: $log)" >&2
t0=$SECONDS
fail() { echo "jaegerbin/build.sh: $1; last lines of $log:" >&2; tail -20 "$log" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"  # outside any go.mod: nothing here may touch a module's go.sum
mod=$(GOFLAGS= go mod download -json "$JAEGER_MODULE@$JAEGER_VERSION" 2>>"$log" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p') \
  || fail "go mod download $JAEGER_MODULE@$JAEGER_VERSION failed"
[ -n "$mod" ] && [ -f "$mod/go.mod" ] && [ -d "$mod/cmd/jaeger" ] || fail "no module directory for $JAEGER_MODULE@$JAEGER_VERSION"
if [ ! -f "$SRC/go.mod" ]; then
  rm -rf "$SRC" "$SRC.tmp" && cp -r "$mod" "$SRC.tmp" && chmod -R u+w "$SRC.tmp" && mv "$SRC.tmp" "$SRC"
fi
cd "$SRC"
# What upstream's scripts/makefiles/BuildInfo.mk stamps in (`jaeger version`).
# The proxy carries no commit, so the commit is the module tag too.
vpkg=$JAEGER_MODULE/internal/version
ldflags="-s -w -X $vpkg.latestVersion=$JAEGER_VERSION -X $vpkg.commitSHA=$JAEGER_VERSION -X $vpkg.date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$DIR/jaeger.tmp" \
  ./cmd/jaeger >>"$log" 2>&1 || fail "go build ./cmd/jaeger failed"
mv "$DIR/jaeger.tmp" "$DIR/jaeger"
echo "jaegerbin/build.sh: jaeger built in $((SECONDS - t0))s" >&2
echo "$DIR/jaeger"
