#!/usr/bin/env bash
# Builds Argo Rollouts' controller, the anchor bench/stacks_scale.py measures
# beside the operator, from the Go module proxy, and caches it beside the
# Kubernetes binaries, keyed by version.
#
#   e2e/argobin/build.sh           # prints the binary's directory on success
#   e2e/argobin/build.sh --cached  # the same if it is built; else exit 1, no build
#
# The directory also holds crds/, the CRDs of the module's manifests/crds/.
# `go install pkg@version` refuses the module (its go.mod has replace
# directives), so the module zip from the proxy is copied to a writable
# directory and built there with its own go.mod and go.sum. Its go line asks
# for a newer Go than the rig's: the approved toolchain, from the proxy too.
# Nothing of Argo's is committed to this repository; only this script.
set -euo pipefail

ARGO_MODULE=github.com/argoproj/argo-rollouts
ARGO_VERSION=${ARGO_ROLLOUTS_VERSION:-v1.10.2}
export GOTOOLCHAIN=${ARGO_GOTOOLCHAIN:-go1.27.3}
CACHE_ROOT=${INFERSTACK_CACHE:-$HOME/.cache/inferstack}
DIR="$CACHE_ROOT/bin/argo-rollouts-$ARGO_VERSION"
SRC="$CACHE_ROOT/build-argo-rollouts-$ARGO_VERSION"

if [ -x "$DIR/rollouts-controller" ] && [ -d "$DIR/crds" ]; then echo "$DIR"; exit 0; fi
[ "${1:-}" != --cached ] || exit 1

command -v go >/dev/null || { echo "argobin/build.sh: 'go' is not on PATH" >&2; exit 1; }
mkdir -p "$DIR"
log="$CACHE_ROOT/build-argo-rollouts-$ARGO_VERSION.log"
echo "argobin/build.sh: building rollouts-controller $ARGO_VERSION into $DIR (log: $log)" >&2
t0=$SECONDS
fail() { echo "argobin/build.sh: $1; last lines of $log:" >&2; tail -20 "$log" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"  # outside any go.mod
mod=$(GOFLAGS= go mod download -json "$ARGO_MODULE@$ARGO_VERSION" 2>>"$log" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p') \
  || fail "go mod download $ARGO_MODULE@$ARGO_VERSION failed"
[ -n "$mod" ] && [ -f "$mod/go.mod" ] || fail "no module directory for $ARGO_MODULE@$ARGO_VERSION"
if [ ! -f "$SRC/go.mod" ]; then
  rm -rf "$SRC" && cp -r "$mod" "$SRC.tmp" && chmod -R u+w "$SRC.tmp" && mv "$SRC.tmp" "$SRC"
fi
cd "$SRC"
# The version upstream's Makefile stamps in (the proxy carries no commit).
vpkg=github.com/argoproj/argo-rollouts/utils/version
ldflags="-s -w -X $vpkg.version=$ARGO_VERSION -X $vpkg.buildDate=1970-01-01T00:00:00Z -X $vpkg.gitTreeState=clean"
GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$DIR/rollouts-controller.tmp" \
  ./cmd/rollouts-controller >>"$log" 2>&1 || fail "go build ./cmd/rollouts-controller failed"
rm -rf "$DIR/crds" && mkdir "$DIR/crds" && cp "$SRC"/manifests/crds/*-crd.yaml "$DIR/crds/"  # not its kustomization.yaml
mv "$DIR/rollouts-controller.tmp" "$DIR/rollouts-controller"
echo "argobin/build.sh: rollouts-controller built in $((SECONDS - t0))s" >&2
echo "$DIR"
