"""How the operator scales with the number of stacks, beside Argo Rollouts, on the local control plane.

    INFERSTACK_AUDIT=1 python3 e2e/cluster.py up
    python bench/stacks_scale.py [--stacks 1000] [--rollouts N] [--steady-seconds 60]

Phase 1 creates N InferenceStacks (1 GPU each) in a fresh namespace, adds kwok
GPU nodes so that they fit, and runs the real operator (that namespace only).
Phase 2, on the same cluster in the same run, installs Argo Rollouts' CRDs
(e2e/argobin/build.sh builds its controller from the Go module proxy), runs
its controller (its own namespace only) and creates --rollouts Rollouts of the
same size: one replica, the pod template of one of the operator's vLLM
Deployments (one container, 1 GPU), a canary strategy with steps. For each
controller it prints, in one table:

* time from the first create until every stack is Ready=True (Rollout: Healthy);
* its RSS before the first create, at the end, and the marginal RSS per
  object, (end - start) / N;
* CPU seconds of its process (/proc/<pid>/stat utime+stime) until all Ready,
  and per reconcile (its own reconcile counter: inferstack's
  inferstack_operator_reconciles_total, Argo's rollout_reconcile_count);
* API requests per object made by the controller alone, until all Ready:
  counted in the API server's audit log (INFERSTACK_AUDIT=1) by user agent
  (the operator: inferstack-operator/ and kopf/; Argo: rollouts-controller),
  so the benchmark's own kubectl polling and the control plane's components
  are not in it;
* steady-state writes per minute by the controller, over --steady-seconds
  with nothing changing.

Needs a cluster started with INFERSTACK_AUDIT=1 (reads $INFERSTACK_RUN_DIR/env).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "e2e"))

import cluster  # noqa: E402  (e2e/cluster.py: node manifests)
from audit import Audit, Request  # noqa: E402  (e2e/audit.py: the API server's audit log, request by request)
from dataplane import free_port, kubectl, load_env, wait_established  # noqa: E402

OPERATOR_AGENTS = ("inferstack-operator/", "kopf/")
ARGO_AGENTS = ("rollouts-controller",)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def of(agents: tuple[str, ...]) -> Callable[[Request], bool]:
    return lambda r: r.user_agent.startswith(agents)


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field_name} for {pid}")


def cpu_seconds(pid: int) -> float:
    # Fields after the command (which may hold spaces): utime is the 14th field, stime the 15th.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def metric_sum(url: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name)


def wait_http(url: str, proc: subprocess.Popen, log: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the process exited {proc.returncode}; log: {log}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer in {timeout:.0f}s; log: {log}")


def stack(name: str, i: int) -> dict:
    return {
        "apiVersion": "inferstack.dev/v1alpha1",
        "kind": "InferenceStack",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "Qwen/Qwen2.5-7B-Instruct", "revision": "a09a35458c702b33eeacc393d103063234e8bc28", "gpus": 1},
            "prompt": {"version": "v1", "system": f"You are assistant number {i}."},
        },
    }


def rollout(name: str, template: dict) -> dict:
    """A Rollout of the same size as a stack: the pod template of the operator's Deployment, canary steps."""
    labels = {"app": name}
    tmpl = json.loads(json.dumps(template))
    tmpl["metadata"] = {"labels": labels}
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": labels},
            "template": tmpl,
            "strategy": {
                "canary": {
                    "steps": [
                        {"setWeight": 10},
                        {"pause": {"duration": "5m"}},
                        {"setWeight": 50},
                        {"pause": {"duration": "10m"}},
                    ]
                }
            },
        },
    }


def count_true(ns: str, kind: str, path: str, want: str) -> int:
    out = kubectl("get", kind, "-n", ns, "-o", "jsonpath={range .items[*]}{" + path + '}{"\\n"}{end}', timeout=300)
    return sum(1 for line in out.splitlines() if line.strip() == want)


def apply_list(ns: str, items: list[dict]) -> None:
    for i in range(0, len(items), 250):  # one kubectl per 250 objects
        chunk = items[i : i + 250]
        kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": chunk}), timeout=600)


@dataclass
class Figures:
    n: int = 0
    all_ready: float = float("nan")
    rss_start: int = 0  # KiB
    rss_end: int = 0
    rss_peak: int = 0
    cpu_to_ready: float = 0.0
    cpu_total: float = 0.0
    reconciles: float = 0.0
    requests: int = 0
    writes: int = 0
    all_requests: int = 0
    steady_writes_per_min: float = 0.0
    steady_requests_per_min: float = 0.0
    steady_detail: dict = field(default_factory=dict)
    request_detail: dict = field(default_factory=dict)


def measure(
    fig: Figures, audit: Audit, agents: tuple[str, ...], pid: int, create: Callable[[], None], ready: Callable[[], int],
    reconciles: Callable[[], float], steady_seconds: float, settle: float, alive: Callable[[], bool], label: str,
) -> None:  # fmt: skip
    """The run common to both controllers: start figures, create, wait for Ready, settle, steady window."""
    mine = of(agents)
    time.sleep(5)  # idle: watches listed on an empty namespace
    fig.rss_start = rss_kib(pid)
    cpu0, rec0, a0 = cpu_seconds(pid), reconciles(), audit.mark()
    t0 = time.monotonic()
    create()
    deadline = t0 + 3600
    peak = 0
    while (n := ready()) < fig.n:
        peak = max(peak, rss_kib(pid))
        if time.monotonic() > deadline or not alive():
            raise SystemExit(f"{label}: only {n}/{fig.n} Ready")
        print(f"{label}: {n}/{fig.n} Ready after {time.monotonic() - t0:.0f} s, RSS {rss_kib(pid) / 1024:.0f} MiB", file=sys.stderr, flush=True)
        time.sleep(3)
    fig.all_ready = time.monotonic() - t0
    fig.cpu_to_ready = cpu_seconds(pid) - cpu0
    a1 = audit.mark()
    reqs = audit.requests(a0, a1)
    ours = [e for e in reqs if mine(e)]
    fig.requests, fig.all_requests = len(ours), len(reqs)
    fig.writes = sum(1 for r in ours if r.write)
    fig.request_detail = dict(Counter(r.what for r in ours).most_common())
    print(f"{label}: all {fig.n} Ready after {fig.all_ready:.1f} s; settling {settle:.0f} s", file=sys.stderr, flush=True)
    time.sleep(settle)  # the last status writes land before quiet is measured
    q0 = audit.mark()
    time.sleep(steady_seconds)
    quiet = [e for e in audit.requests(q0, audit.mark()) if mine(e)]
    qw = [r for r in quiet if r.write]
    fig.steady_writes_per_min = len(qw) * 60 / steady_seconds
    fig.steady_requests_per_min = len(quiet) * 60 / steady_seconds
    fig.steady_detail = dict(Counter(r.what for r in qw))
    fig.rss_end = rss_kib(pid)
    fig.rss_peak = max(peak, rss_kib(pid, "VmHWM"))
    fig.cpu_total = cpu_seconds(pid) - cpu0
    fig.reconciles = reconciles() - rec0


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_operator(args, audit: Audit, ns: str) -> tuple[Figures, dict]:
    fig = Figures(n=args.stacks)
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="operator-", suffix=".log", delete=False)  # noqa: SIM115 - handed to the child process
    op = subprocess.Popen(
        [str(REPO / ".venv/bin/inferstack-operator"), "--kubeconfig", os.environ["KUBECONFIG"], "--namespace", ns,
         "--resync-seconds", str(args.resync_seconds), "--metrics-host", "127.0.0.1", "--metrics-port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_http(url, op, log.name)
        measure(
            fig, audit, OPERATOR_AGENTS, op.pid,
            create=lambda: apply_list(ns, [stack(f"s{i:04d}", i) for i in range(args.stacks)]),
            ready=lambda: count_true(ns, "istack", '.status.conditions[?(@.type=="Ready")].status', "True"),
            reconciles=lambda: metric_sum(url, "inferstack_operator_reconciles_total"),
            steady_seconds=args.steady_seconds, settle=max(10, 2 * args.resync_seconds), alive=lambda: op.poll() is None,
            label="inferstack",
        )  # fmt: skip
        deps = json.loads(kubectl("get", "deployments", "-n", ns, "-o", "json", timeout=300))["items"]
        template = deps[0]["spec"]["template"]
    finally:
        stop(op)
    print(f"inferstack: operator log {log.name}", file=sys.stderr)
    return fig, template


def run_argo(args, audit: Audit, ns: str, template: dict) -> Figures:
    fig = Figures(n=args.rollouts)
    proc = subprocess.run([str(REPO / "e2e/argobin/build.sh")], stdout=subprocess.PIPE, text=True, check=True)
    argo = Path(proc.stdout.strip().splitlines()[-1])
    kubectl("apply", "--server-side", "-f", str(argo / "crds"), timeout=300)
    wait_established("rollouts.argoproj.io")
    metrics_port, healthz_port = free_port(), free_port()
    log = tempfile.NamedTemporaryFile(prefix="rollouts-controller-", suffix=".log", delete=False)  # noqa: SIM115 - handed to the child process
    ctl = subprocess.Popen(
        [str(argo / "rollouts-controller"), "--kubeconfig", os.environ["KUBECONFIG"], "--namespaced", "--namespace", ns,
         "--metricsport", str(metrics_port), "--healthzPort", str(healthz_port), "--leader-elect=false", "--loglevel", "warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        wait_http(url, ctl, log.name)
        measure(
            fig, audit, ARGO_AGENTS, ctl.pid,
            create=lambda: apply_list(ns, [rollout(f"r{i:04d}", template) for i in range(args.rollouts)]),
            ready=lambda: count_true(ns, "rollouts.argoproj.io", ".status.phase", "Healthy"),
            reconciles=lambda: metric_sum(url, "rollout_reconcile_count"),
            steady_seconds=args.steady_seconds, settle=max(10, 2 * args.resync_seconds), alive=lambda: ctl.poll() is None,
            label="argo-rollouts",
        )  # fmt: skip
    finally:
        stop(ctl)
    print(f"argo-rollouts: controller log {log.name}", file=sys.stderr)
    return fig


def table(figs: list[tuple[str, Figures]], args) -> str:
    def kib(x: float) -> str:
        return f"{x / 1024:.0f} MiB"

    rows: list[tuple[str, list[str]]] = [
        ("objects (InferenceStacks / Rollouts), 1 GPU each", [f"{f.n}" for _, f in figs]),
        ("time until all Ready (Rollout: Healthy)", [f"{f.all_ready:.1f} s" for _, f in figs]),
        ("RSS at start (idle, watches listed)", [kib(f.rss_start) for _, f in figs]),
        ("RSS at the end (after the steady window)", [kib(f.rss_end) for _, f in figs]),
        ("RSS peak", [kib(f.rss_peak) for _, f in figs]),
        ("marginal RSS per object, (end - start) / N", [f"{(f.rss_end - f.rss_start) / f.n:.0f} KiB" for _, f in figs]),
        ("CPU seconds until all Ready", [f"{f.cpu_to_ready:.1f} s" for _, f in figs]),
        ("reconciles (own counter), create to end of steady", [f"{f.reconciles:.0f}" for _, f in figs]),
        ("CPU per reconcile, create to end of steady", [f"{1000 * f.cpu_total / max(f.reconciles, 1):.1f} ms" for _, f in figs]),
        ("API requests per object, this controller alone, until Ready", [f"{f.requests / f.n:.1f}" for _, f in figs]),
        ("  of which writes", [f"{f.writes / f.n:.1f}" for _, f in figs]),
        ("  (all clients in the same window, per object)", [f"{f.all_requests / f.n:.1f}" for _, f in figs]),
        (f"steady-state writes/min ({args.steady_seconds:.0f} s, nothing changing)", [f"{f.steady_writes_per_min:.1f}" for _, f in figs]),
        ("steady-state requests/min (reads included)", [f"{f.steady_requests_per_min:.1f}" for _, f in figs]),
    ]
    names = [name for name, _ in figs]
    w0 = max(len(r[0]) for r in rows)
    ws = [max(len(n), *(len(r[1][i]) for r in rows)) for i, n in enumerate(names)]
    out = ["| " + " | ".join([f"{'metric':<{w0}}", *(f"{n:<{w}}" for n, w in zip(names, ws, strict=True))]) + " |"]
    out.append("|" + "|".join(["-" * (w0 + 2), *("-" * (w + 2) for w in ws)]) + "|")
    for k, vals in rows:
        out.append("| " + " | ".join([f"{k:<{w0}}", *(f"{v:>{w}}" for v, w in zip(vals, ws, strict=True))]) + " |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", type=int, default=1000)
    parser.add_argument("--rollouts", type=int, help="Argo Rollouts to run beside (default: as many as stacks; 0: none)")
    parser.add_argument("--steady-seconds", type=float, default=60)
    parser.add_argument("--resync-seconds", type=float, default=5, help="the operator's resync interval (its default is 5 s)")
    args = parser.parse_args()
    args.rollouts = args.stacks if args.rollouts is None else args.rollouts
    load_env()
    if not os.environ.get("INFERSTACK_AUDIT_LOG"):
        raise SystemExit("needs the API server's audit log: start the cluster with INFERSTACK_AUDIT=1 python3 e2e/cluster.py up")
    audit = Audit(Path(os.environ["INFERSTACK_AUDIT_LOG"]))
    kubectl("apply", "--server-side", "-f", str(REPO / "crds"), timeout=300)

    # GPUs already taken by pods of other namespaces (earlier tests) do not count.
    pods = json.loads(kubectl("get", "pods", "-A", "-o", "json", timeout=300))["items"]
    used = sum(
        int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
        for p in pods if p["status"].get("phase") in ("Pending", "Running") for c in p["spec"]["containers"]
    )  # fmt: skip
    nodes_needed = -(-(args.stacks + args.rollouts + used) // cluster.GPUS_PER_NODE) + 1
    nodes = [cluster.gpu_node(i) for i in range(nodes_needed)]
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}), timeout=300)
    kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=300s", timeout=330)
    print(f"{nodes_needed} GPU nodes x {cluster.GPUS_PER_NODE} Ready", file=sys.stderr, flush=True)

    tag = uuid.uuid4().hex[:6]
    ns, argo_ns = f"bench-{tag}", f"bench-argo-{tag}"
    figs: list[tuple[str, Figures]] = []
    try:
        kubectl("create", "namespace", ns)
        fig, template = run_operator(args, audit, ns)
        figs.append(("inferstack operator", fig))
        print(table(figs, args), file=sys.stderr, flush=True)  # kept if the second phase fails
        if args.rollouts:
            kubectl("create", "namespace", argo_ns)
            figs.append(("Argo Rollouts v1.10.2", run_argo(args, audit, argo_ns, template)))
    finally:
        for n in (ns, argo_ns):
            kubectl("delete", "namespace", n, "--wait=false", "--ignore-not-found")
    print(table(figs, args))
    print(f"operator resync interval {args.resync_seconds:g} s; Argo Rollouts with --namespaced --leader-elect=false, default resync")
    for name, f in figs:
        print(f"{name}: requests until Ready by verb and resource: {f.request_detail}")
        print(f"{name}: steady-state writes: {f.steady_detail or 'none'}")


if __name__ == "__main__":
    main()
