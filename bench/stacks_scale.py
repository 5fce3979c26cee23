"""How the operator scales with the number of stacks, on the local control plane.

    python bench/stacks_scale.py [--stacks 200] [--steady-seconds 60]

Creates N InferenceStacks (1 GPU each) in a fresh namespace, adds kwok GPU
nodes so that they fit, runs the real operator and prints a table:

* time from the first create until every stack is Ready=True;
* the operator's peak RSS (VmHWM);
* API requests per stack (apiserver_request_total, all clients, during the run);
* steady-state writes per minute: POST/PUT/PATCH/DELETE on the resources the
  operator owns, over --steady-seconds with nothing changing.

Needs `make cluster-up` (reads .run/env).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "e2e"))
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import cluster  # noqa: E402  (e2e/cluster.py: node manifests)
from dataplane import kubectl, load_env  # noqa: E402

WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE"}
OWNED_RESOURCES = {"inferencestacks", "configmaps", "services", "deployments", "controllerrevisions", "events"}


def apiserver_requests() -> dict[tuple[str, str], float]:
    """(verb, resource) -> count, from the API server's own metric."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(kubectl("get", "--raw", "/metrics")):
        if fam.name != "apiserver_request":
            continue
        for s in fam.samples:
            if s.name == "apiserver_request_total":
                key = (s.labels.get("verb", ""), s.labels.get("resource", ""))
                out[key] = out.get(key, 0) + s.value
    return out


def delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


def owned_writes(d: dict) -> float:
    return sum(v for (verb, res), v in d.items() if verb in WRITE_VERBS and res in OWNED_RESOURCES)


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


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ready_count(ns: str) -> int:
    items = json.loads(kubectl("get", "istack", "-n", ns, "-o", "json"))["items"]
    return sum(
        1 for o in items if any(c["type"] == "Ready" and c["status"] == "True" for c in o.get("status", {}).get("conditions", []))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", type=int, default=200)
    parser.add_argument("--steady-seconds", type=float, default=60)
    parser.add_argument("--resync-seconds", type=float, default=5)
    args = parser.parse_args()
    load_env()

    # GPUs already taken by pods of other namespaces (earlier tests) do not count.
    pods = json.loads(kubectl("get", "pods", "-A", "-o", "json"))["items"]
    used = sum(
        int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
        for p in pods if p["status"].get("phase") in ("Pending", "Running") for c in p["spec"]["containers"]
    )  # fmt: skip
    nodes_needed = -(-(args.stacks + used) // cluster.GPUS_PER_NODE) + 1
    nodes = [cluster.gpu_node(i) for i in range(nodes_needed)]
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
    kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=120s")

    ns = f"bench-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    log = tempfile.NamedTemporaryFile(prefix="operator-", suffix=".log", delete=False)  # noqa: SIM115 - handed to the child process
    op = subprocess.Popen(
        [str(REPO / ".venv/bin/inferstack-operator"), "--kubeconfig", os.environ["KUBECONFIG"], "--namespace", ns,
         "--resync-seconds", str(args.resync_seconds), "--metrics-port", "0"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        before = apiserver_requests()
        t0 = time.monotonic()
        items = [stack(f"s{i:04d}", i) for i in range(args.stacks)]
        kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        deadline = t0 + 900
        while (ready := ready_count(ns)) < args.stacks:
            if time.monotonic() > deadline or op.poll() is not None:
                raise SystemExit(f"only {ready}/{args.stacks} Ready; operator log: {log.name}")
            time.sleep(1)
        all_ready = time.monotonic() - t0
        at_ready = apiserver_requests()
        # Let the last status and plan writes land before measuring quiet.
        time.sleep(max(5, 2 * args.resync_seconds))
        quiet_start = apiserver_requests()
        time.sleep(args.steady_seconds)
        quiet = delta(apiserver_requests(), quiet_start)
        rss = peak_rss_mib(op.pid)
    finally:
        op.terminate()
        op.wait(timeout=30)
        kubectl("delete", "namespace", ns, "--wait=false")

    rollout = delta(at_ready, before)
    per_stack = sum(rollout.values()) / args.stacks
    writes_per_stack = owned_writes(rollout) / args.stacks
    steady = owned_writes(quiet) * 60 / args.steady_seconds
    rows = [
        ("stacks", f"{args.stacks}"),
        ("time until all Ready", f"{all_ready:.1f} s"),
        ("operator peak RSS", f"{rss:.0f} MiB"),
        ("API requests per stack (all clients, until Ready)", f"{per_stack:.1f}"),
        ("  of which writes to owned kinds", f"{writes_per_stack:.1f}"),
        (f"steady-state writes/min (owned kinds, {args.steady_seconds:.0f} s)", f"{steady:.1f}"),
        ("operator resync interval", f"{args.resync_seconds:g} s"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'metric':<{width}} | value")
    print(f"{'-' * width}-|------")
    for k, v in rows:
        print(f"{k:<{width}} | {v}")
    if quiet:
        print("steady-state requests by (verb, resource):", {f"{v} {r}": c for (v, r), c in sorted(quiet.items())})


if __name__ == "__main__":
    main()
