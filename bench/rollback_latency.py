"""Rollback latency: from a gate metric crossing its threshold in Prometheus to 0 % candidate traffic at the router.

    python bench/rollback_latency.py [--runs 20] [--analysis-interval 2s]

Each run rolls out a new candidate to a 50 % canary on the local control
plane, with real Prometheus, router, stand-in and operator. The gate reads a
metric this script serves (scraped by Prometheus every second):

    max(inferstack_bench_gate{revision="{{revision}}"})   threshold: max 0.5

Then the script flips the candidate's value to 1 and measures

* t_cross: the first moment Prometheus answers the gate query with 1
  (polled every 25 ms), i.e. the metric has crossed in Prometheus;
* t_switch: the first moment the router serves a canary user (one whose
  sticky bucket is in the candidate) from the stable revision (polled every
  20 ms through real HTTP).

and prints the median and maximum of t_switch - t_cross next to the
analysis interval. Needs `make cluster-up` (reads .run/env).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "e2e"))

from dataplane import DataPlane, free_port, kubectl, load_env, prometheus_query, scrape_targets, wait_for  # noqa: E402
from inferstack.core.durations import parse_duration  # noqa: E402
from inferstack.router.assignment import BUCKETS, bucket  # noqa: E402


class GateMetric:
    """A /metrics endpoint whose per-revision value the benchmark sets."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.port = free_port()
        values = self.values

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = "".join(f'inferstack_bench_gate{{revision="{r}"}} {v}\n' for r, v in list(values.items())).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def stack(system: str, interval: str) -> dict:
    return {
        "apiVersion": "inferstack.dev/v1alpha1",
        "kind": "InferenceStack",
        "metadata": {"name": "rb"},
        "spec": {
            "model": {"name": "Qwen/Qwen2.5-7B-Instruct", "revision": "a09a35458c702b33eeacc393d103063234e8bc28", "gpus": 1},
            "prompt": {"version": "v1", "system": system},
            "rollout": {"analysisInterval": interval, "scaleDownDelay": "1s", "steps": [{"canary": {"weight": 50, "duration": "1h"}}]},
            "gates": [
                {
                    "name": "guard",
                    "kind": "Guardrail",
                    "prometheus": {"query": 'max(inferstack_bench_gate{revision="{{revision}}"})'},
                    "threshold": {"max": 0.5},
                }
            ],
        },
    }


def status(ns: str) -> dict:
    return json.loads(kubectl("get", "istack", "rb", "-n", ns, "-o", "json")).get("status", {})


def served_by(router: str, model: str, user: str, key: str) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Who are you?"}], "max_tokens": 8}).encode()
    headers = {"Content-Type": "application/json", "x-user-id": user, "Authorization": f"Bearer {key}"}
    req = urllib.request.Request(f"{router}/v1/chat/completions", data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=5) as r:
        r.read()
        return r.headers["x-inferstack-revision"]


def canary_user(revision: str, weight: int) -> str:
    """A user id whose sticky bucket puts it in the candidate at this weight."""
    # The router hashes "user:<x-user-id>" (router/assignment.py).
    return next(u for i in range(10_000) if bucket(revision, "user:" + (u := f"user-{i}")) < weight * (BUCKETS // 100))


def one_run(ns: str, dp: DataPlane, gate: GateMetric, i: int, interval: str) -> float:
    model = f"{ns}/rb"
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(stack(f"You are assistant run {i}.", interval)))
    cand = wait_for("candidate", lambda: status(ns).get("candidateRevision"), timeout=60)
    gate.values[cand] = 0.0
    user = canary_user(cand, 50)
    key = dp.key_for(ns)
    wait_for("canary traffic at the router", lambda: served_by(dp.router_url, model, user, key) == cand, timeout=60, interval=0.1)
    query = f'max(inferstack_bench_gate{{revision="{cand}"}})'
    wait_for("Prometheus has the passing value", lambda: (r := prometheus_query(query)) and r[0]["value"][1] == "0", timeout=30)

    switched: dict[str, float] = {}

    def watch_router() -> None:
        while served_by(dp.router_url, model, user, key) == cand:
            time.sleep(0.02)
        switched["t"] = time.monotonic()

    watcher = threading.Thread(target=watch_router, daemon=True)
    watcher.start()
    gate.values[cand] = 1.0
    t_cross = wait_for(
        "the crossing in Prometheus",
        lambda: (r := prometheus_query(query)) and r[0]["value"][1] == "1" and time.monotonic(),
        timeout=30,
        interval=0.025,
    )
    watcher.join(timeout=60)
    if "t" not in switched:
        raise SystemExit(f"run {i}: the router never left candidate {cand}")
    wait_for("Degraded", lambda: status(ns).get("phase") == "Degraded", timeout=30)
    return switched["t"] - t_cross


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--analysis-interval", default="2s")
    args = parser.parse_args()
    load_env()
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    ns = f"bench-rb-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    gate = GateMetric()
    scrape_targets(f"bench-gate-{gate.port}", [f"127.0.0.1:{gate.port}"])
    latencies: list[float] = []
    dp = DataPlane(Path(tempfile.mkdtemp(prefix="rollback-bench-")), namespace=ns)
    try:
        dp.start()
        kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(stack("You are assistant run 0.", args.analysis_interval)))
        kubectl("wait", "-n", ns, "--for=condition=Ready", "istack/rb", "--timeout=60s")
        for i in range(1, args.runs + 1):
            latencies.append(one_run(ns, dp, gate, i, args.analysis_interval))
            print(f"run {i:2d}: {latencies[-1] * 1000:7.0f} ms", file=sys.stderr)
    finally:
        dp.stop()
        Path(os.environ["INFERSTACK_PROMETHEUS_TARGETS"], f"bench-gate-{gate.port}.json").unlink(missing_ok=True)
        kubectl("delete", "namespace", ns, "--wait=false")
    interval_s = parse_duration(args.analysis_interval).total_seconds()
    rows = [
        ("runs", f"{len(latencies)}"),
        ("analysis interval", f"{interval_s:g} s"),
        ("median rollback latency", f"{statistics.median(latencies):.2f} s"),
        ("p90 rollback latency", f"{statistics.quantiles(latencies, n=10)[-1]:.2f} s" if len(latencies) >= 10 else "-"),
        ("max rollback latency", f"{max(latencies):.2f} s"),
        ("min rollback latency", f"{min(latencies):.2f} s"),
        ("target (interval + 1 s)", f"{interval_s + 1:g} s"),
        ("runs within target", f"{sum(x <= interval_s + 1 for x in latencies)}/{len(latencies)}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"{'metric':<{width}} | value\n{'-' * width}-|------")
    for k, v in rows:
        print(f"{k:<{width}} | {v}")


if __name__ == "__main__":
    main()
