#!/usr/bin/env bash
# Builds the kstatus test helper (main.go: upstream sigs.k8s.io/cli-utils kstatus,
# what Flux computes health with) from the Go module proxy, cached by version
# outside the repository like the control plane's binaries. Prints its path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1=="sigs.k8s.io/cli-utils"{print $2; exit}' "$here/go.mod")
sum=$(cat "$here/main.go" "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)
bin="${INFERSTACK_CACHE:-$HOME/.cache/inferstack}/bin/kstatus-$version-$sum/kstatus"
if [ ! -x "$bin" ]; then
  command -v go >/dev/null || { echo "kstatus/build.sh: 'go' is not on PATH" >&2; exit 1; }
  mkdir -p "$(dirname "$bin")"
  (cd "$here" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -o "$bin.tmp" . && mv "$bin.tmp" "$bin")
fi
echo "$bin"
