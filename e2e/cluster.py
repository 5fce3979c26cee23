"""The local test cluster: a real control plane plus Prometheus, without Docker.

    python e2e/cluster.py up        # build (cached) + start; idempotent
    python e2e/cluster.py down      # stop everything this started
    python e2e/cluster.py status

The control plane is upstream etcd, kube-apiserver, kube-controller-manager
and kube-scheduler, built from the Go module proxy by e2e/k8sbin/build.sh,
run by kwokctl's binary runtime (which writes certificates and a kubeconfig
and manages the processes). kwok turns fake GPU nodes into Ready nodes and
makes scheduled pods Running/Ready. Prometheus is upstream's server, built
from the Go module proxy by e2e/prombin/build.sh (INFERSTACK_PROMETHEUS_BIN
runs another binary), with a config the tests control: static targets from
files in .run/prometheus/targets.

Only the standard library: it runs before the project is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN = Path(os.environ.get("INFERSTACK_RUN_DIR", REPO / ".run"))
KUBECONFIG = RUN / "kubeconfig"
CLUSTER = os.environ.get("INFERSTACK_CLUSTER", "inferstack-e2e")
CONTEXT = f"kwok-{CLUSTER}"  # kwokctl names the context after the cluster
APISERVER_PORT = int(os.environ.get("INFERSTACK_APISERVER_PORT", "36443"))
PROM_PORT = int(os.environ.get("INFERSTACK_PROMETHEUS_PORT", "39090"))
PROM_DIR = RUN / "prometheus"
# kwokctl keeps its state (certs, pids, logs) here, per checkout.
KWOK_WORKDIR = RUN / "kwok"

GPU_NODES = int(os.environ.get("INFERSTACK_GPU_NODES", "4"))
GPUS_PER_NODE = int(os.environ.get("INFERSTACK_GPUS_PER_NODE", "8"))
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
# A real cluster's Service range, not kube-apiserver's default 10.0.0.0/24
# (254 addresses: one Service per revision filled it at about 250 stacks).
# Same base, so the kubernetes Service keeps 10.0.0.1.
SERVICE_CIDR = os.environ.get("INFERSTACK_SERVICE_CIDR", "10.0.0.0/16")
# INFERSTACK_AUDIT=1: the API server writes an audit log (metadata level, one
# JSON line per request with its user agent), which bench/stacks_scale.py
# reads to count the requests of one client alone, and the leader-election
# e2e to tell which replica wrote what. Off unless set (it costs the API
# server CPU); `make cluster-up` sets it.
AUDIT = os.environ.get("INFERSTACK_AUDIT", "") not in ("", "0")
AUDIT_POLICY = RUN / "audit-policy.yaml"
# Gateway API CRDs for the GatewayAPI traffic provider's tests, taken from the
# module's own config/ tree through the Go module proxy (no other download).
GATEWAY_API_VERSION = "v1.4.1"


def log(msg: str) -> None:
    print(f"cluster: {msg}", file=sys.stderr, flush=True)


def fail(msg: str) -> None:
    log(f"error: {msg}")
    sys.exit(1)


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(what: str, check, timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    fail(f"timed out after {timeout:.0f}s waiting for {what}")


def binaries() -> Path:
    proc = subprocess.run([str(REPO / "e2e/k8sbin/build.sh")], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        fail("building the control plane binaries failed (see the build log named above)")
    return Path(proc.stdout.strip().splitlines()[-1])


def prometheus_binary() -> Path:
    """INFERSTACK_PROMETHEUS_BIN, else the pinned upstream build (built and cached when missing)."""
    if override := os.environ.get("INFERSTACK_PROMETHEUS_BIN"):
        if not Path(override).is_file():
            fail(f"INFERSTACK_PROMETHEUS_BIN={override} is not a file")
        return Path(override)
    proc = subprocess.run([str(REPO / "e2e/prombin/build.sh")], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        fail("building Prometheus failed (see the build log named above)")
    return Path(proc.stdout.strip().splitlines()[-1])


def kubectl(bin_dir: Path, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(bin_dir / "kubectl"), "--kubeconfig", str(KUBECONFIG), "--context", CONTEXT, *args]
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True)
    if check and proc.returncode != 0:
        fail(f"{' '.join(cmd[3:])}: {proc.stderr.strip()}")
    return proc


def kwokctl(bin_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "KWOK_WORKDIR": str(KWOK_WORKDIR), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run([str(bin_dir / "kwokctl"), *args], env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        fail(f"kwokctl {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def audit_log() -> Path:
    """Where kwokctl's binary runtime has the API server write its audit log."""
    return KWOK_WORKDIR / "clusters" / CLUSTER / "logs" / "audit.log"


def audit_policy() -> str:
    # Metadata only (no bodies), once per request (at ResponseComplete; the
    # long-running watches at ResponseStarted).
    return (
        "apiVersion: audit.k8s.io/v1\nkind: Policy\n"
        "omitStages: [RequestReceived]\n"
        "rules:\n  - level: Metadata\n"
    )


def apiserver_answers(bin_dir: Path) -> bool:
    if not KUBECONFIG.exists():
        return False
    return kubectl(bin_dir, "get", "--raw", "/readyz", check=False).returncode == 0


def gpu_node(i: int) -> dict:
    name = f"gpu-node-{i}"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            # kwok manages nodes carrying this annotation (kwokctl's default selector).
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                # What NVIDIA's GPU feature discovery puts on real GPU nodes.
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": GPU_PRODUCT,
                "nvidia.com/gpu.memory": "81559",
                "nvidia.com/gpu.count": str(GPUS_PER_NODE),
                "nvidia.com/cuda.driver.major": "550",
                "inferstack.dev/pool": "interactive",
            },
        },
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"cpu": "96", "memory": "1000Gi", "pods": "110", "nvidia.com/gpu": str(GPUS_PER_NODE)},
            "capacity": {"cpu": "96", "memory": "1000Gi", "pods": "110", "nvidia.com/gpu": str(GPUS_PER_NODE)},
        },
    }


def cpu_node() -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "cpu-node-0",
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": "cpu-node-0", "kubernetes.io/os": "linux", "type": "kwok"},
        },
        "status": {
            "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
        },
    }


def cluster_up(bin_dir: Path) -> None:
    if apiserver_answers(bin_dir):
        log(f"control plane already up (context {CONTEXT})")
    else:
        # A cluster left behind by a killed session has state but no processes.
        kwokctl(bin_dir, "delete", "cluster", "--name", CLUSTER, check=False)
        if port_in_use(APISERVER_PORT):
            fail(f"port {APISERVER_PORT} is taken by another process; free it or set INFERSTACK_APISERVER_PORT")
        RUN.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        extra = []
        if AUDIT:
            AUDIT_POLICY.write_text(audit_policy())
            # The API server rotates the log at 100 MB, and bench/stacks_scale.py reads it by offset.
            # Not 0: its log writer (lumberjack) takes 0 for its default, 100 MB; 100000 MB is never here.
            extra += ["--kube-audit-policy", str(AUDIT_POLICY), "--extra-args", "kube-apiserver=audit-log-maxsize=100000"]
        kwokctl(
            bin_dir,
            "create", "cluster",
            "--name", CLUSTER,
            "--runtime", "binary",
            "--kubeconfig", str(KUBECONFIG),
            "--kube-apiserver-port", str(APISERVER_PORT),
            "--etcd-binary", str(bin_dir / "etcd"),
            "--kube-apiserver-binary", str(bin_dir / "kube-apiserver"),
            "--kube-controller-manager-binary", str(bin_dir / "kube-controller-manager"),
            "--kube-scheduler-binary", str(bin_dir / "kube-scheduler"),
            "--kwok-controller-binary", str(bin_dir / "kwok"),
            "--extra-args", f"kube-apiserver=service-cluster-ip-range={SERVICE_CIDR}",
            "--extra-args", f"kube-controller-manager=service-cluster-ip-range={SERVICE_CIDR}",
            *extra,
            "--wait", "2m",
        )  # fmt: skip
        log(f"control plane started in {time.monotonic() - t0:.1f}s")
    nodes = [gpu_node(i) for i in range(GPU_NODES)] + [cpu_node()]
    kubectl(bin_dir, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
    kubectl(bin_dir, "wait", "--for=condition=Ready", "node", "--all", "--timeout=120s")
    log(f"{GPU_NODES} GPU nodes x {GPUS_PER_NODE} nvidia.com/gpu Ready; KUBECONFIG={KUBECONFIG}")


def gateway_api_crds(bin_dir: Path) -> None:
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"sigs.k8s.io/gateway-api@{GATEWAY_API_VERSION}"],
        capture_output=True, text=True, cwd=REPO / "e2e" / "k8sbin",
    )  # fmt: skip
    if proc.returncode != 0:
        fail(f"go mod download sigs.k8s.io/gateway-api@{GATEWAY_API_VERSION}: {proc.stderr or proc.stdout}")
    crds = Path(json.loads(proc.stdout)["Dir"]) / "config" / "crd" / "standard"
    kubectl(bin_dir, "apply", "--server-side", "-f", str(crds))
    log(f"Gateway API {GATEWAY_API_VERSION} CRDs installed")


def prometheus_config() -> str:
    return (
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: inferstack\n"
        "    file_sd_configs:\n"
        f"      - files: ['{PROM_DIR}/targets/*.json']\n"
        "        refresh_interval: 1s\n"
    )


def prometheus_ready() -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PROM_PORT}/-/ready", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def prometheus_version() -> str:
    try:
        url = f"http://127.0.0.1:{PROM_PORT}/api/v1/status/buildinfo"
        with urllib.request.urlopen(url, timeout=1) as r:
            return str(json.load(r)["data"]["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def prometheus_up(binary: Path | None = None) -> None:
    binary = binary or prometheus_binary()
    if prometheus_ready():
        running = prometheus_version()
        log(f"prometheus {running} already up on 127.0.0.1:{PROM_PORT}")
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout.split()
        want = out[2] if len(out) > 2 else "unknown"  # "prometheus, version 3.16.0 (branch: ..."
        if running != want:
            log(f"warning: not {binary}'s {want}; stop it (pid in {PROM_DIR / 'pid'}) and run `up` again to use that one")
        return
    if port_in_use(PROM_PORT):
        fail(f"port {PROM_PORT} is taken by another process; free it or set INFERSTACK_PROMETHEUS_PORT")
    (PROM_DIR / "targets").mkdir(parents=True, exist_ok=True)
    (PROM_DIR / "prometheus.yml").write_text(prometheus_config())
    shutil.rmtree(PROM_DIR / "data", ignore_errors=True)
    logf = open(PROM_DIR / "prometheus.log", "ab")  # noqa: SIM115 - handed to the child process, which outlives this scope
    proc = subprocess.Popen(
        [
            str(binary),
            f"--config.file={PROM_DIR / 'prometheus.yml'}",
            f"--storage.tsdb.path={PROM_DIR / 'data'}",
            f"--web.listen-address=127.0.0.1:{PROM_PORT}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=2h",
        ],
        stdout=logf,
        stderr=logf,
        start_new_session=True,  # survives this script; `down` stops it by pid
    )
    (PROM_DIR / "pid").write_text(str(proc.pid))
    wait_for("prometheus /-/ready", prometheus_ready, timeout=60)
    log(f"prometheus {prometheus_version()} up on 127.0.0.1:{PROM_PORT} (targets: {PROM_DIR / 'targets'})")


def prometheus_down() -> None:
    pidfile = PROM_DIR / "pid"
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pidfile.unlink(missing_ok=True)
    log("prometheus stopped")


def write_env(prometheus: Path) -> None:
    """A file tests and shells can source: where everything is."""
    (RUN / "env").write_text(
        f"export KUBECONFIG={KUBECONFIG}\n"
        f"export INFERSTACK_E2E_CONTEXT={CONTEXT}\n"
        f"export INFERSTACK_PROMETHEUS_URL=http://127.0.0.1:{PROM_PORT}\n"
        f"export INFERSTACK_PROMETHEUS_TARGETS={PROM_DIR / 'targets'}\n"
        f"export INFERSTACK_PROMETHEUS_BIN={prometheus}\n"
        f"export INFERSTACK_BIN={binaries()}\n"
        f"export INFERSTACK_HELM={binaries() / 'helm'}\n"
        + (f"export INFERSTACK_AUDIT_LOG={audit_log()}\n" if AUDIT else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "build"])
    args = parser.parse_args()
    bin_dir = binaries()
    if args.command == "build":
        print(bin_dir)
    elif args.command == "up":
        cluster_up(bin_dir)
        gateway_api_crds(bin_dir)
        prometheus = prometheus_binary()
        prometheus_up(prometheus)
        write_env(prometheus)
        print(f"ready: source {RUN / 'env'}")
    elif args.command == "down":
        prometheus_down()
        kwokctl(bin_dir, "delete", "cluster", "--name", CLUSTER, check=False)
        log("control plane stopped")
    else:
        up = apiserver_answers(bin_dir)
        print(f"apiserver: {'up' if up else 'down'} ({CONTEXT}, {KUBECONFIG})")
        prom = f"up, {prometheus_version()}" if prometheus_ready() else "down"
        print(f"prometheus: {prom} (127.0.0.1:{PROM_PORT})")
        sys.exit(0 if up and prometheus_ready() else 1)


if __name__ == "__main__":
    main()
