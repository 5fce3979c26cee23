#!/usr/bin/env bash
# Builds the local control plane's binaries from the Go module proxy and
# caches them outside the repository, keyed by version, so that only the
# first run on a machine pays for the build (see README: "Local control plane").
#
#   e2e/k8sbin/build.sh            # prints the cache directory on success
#
# Prometheus has its own script and pin (e2e/prombin/build.sh), outside this
# module: it requires k8s.io/client-go v0.37.1, the replace block here pins the
# v0.34.4 staging modules. It is built first, into its own cache directory.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
"$here/../prombin/build.sh" >/dev/null
K8S_VERSION=$(awk '$1=="k8s.io/kubernetes"{print $2; exit}' "$here/go.mod")
ETCD_VERSION=$(awk '$1=="go.etcd.io/etcd/server/v3"{print $2; exit}' "$here/go.mod")
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
HELM_VERSION=${HELM_VERSION:-v3.19.0}  # only for the chart's lint/template tests
CACHE_ROOT=${INFERSTACK_CACHE:-$HOME/.cache/inferstack}
BIN="$CACHE_ROOT/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION"

want=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kwokctl helm)
missing=()
for b in "${want[@]}"; do [ -x "$BIN/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then echo "$BIN"; exit 0; fi

command -v go >/dev/null || { echo "build.sh: 'go' is not on PATH; install Go >= 1.24" >&2; exit 1; }
mkdir -p "$BIN"
log="$CACHE_ROOT/build-$K8S_VERSION.log"
echo "build.sh: building ${missing[*]} into $BIN (log: $log)" >&2

export CGO_ENABLED=0 GOFLAGS=-mod=mod
# Tell the truth in `--version`: the same ldflags that upstream's
# hack/lib/version.sh sets, filled from the pinned module version.
minor=$(echo "$K8S_VERSION" | cut -d. -f2)
vpkg=k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor"
ldflags+=" -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"
ldflags+=" -X $vpkg/verflag.programName=kubernetes"
# client-go's copy of the version is what kubectl reports as its client version
ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"

build() {  # build NAME PACKAGE
  local name=$1 pkg=$2 t0=$SECONDS
  ( cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$BIN/$name.tmp" "$pkg" ) >>"$log" 2>&1 \
    || { echo "build.sh: building $name ($pkg) failed; last lines of $log:" >&2; tail -20 "$log" >&2; exit 1; }
  mv "$BIN/$name.tmp" "$BIN/$name"
  echo "build.sh: $name built in $((SECONDS - t0))s" >&2
}
for b in "${missing[@]}"; do
  case $b in
    etcd) build etcd go.etcd.io/etcd/server/v3 ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl) build "$b" "k8s.io/kubernetes/cmd/$b" ;;
    kwok|kwokctl)
      t0=$SECONDS
      GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/$b@$KWOK_VERSION" >>"$log" 2>&1 \
        || { echo "build.sh: go install $b@$KWOK_VERSION failed; last lines of $log:" >&2; tail -20 "$log" >&2; exit 1; }
      echo "build.sh: $b built in $((SECONDS - t0))s" >&2 ;;
    helm)
      t0=$SECONDS
      GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >>"$log" 2>&1 \
        || { echo "build.sh: go install helm@$HELM_VERSION failed; last lines of $log:" >&2; tail -20 "$log" >&2; exit 1; }
      echo "build.sh: helm built in $((SECONDS - t0))s" >&2 ;;
  esac
done
echo "$BIN"
