"""Every query of the chart's Grafana dashboard returns data on Prometheus after a real rollout.

The e2e data plane (router, model stand-in, judge stand-in, operator) runs a
stack with a PromQL gate, a rule check and a pairwise-judge gate through a promotion
and a rollback, under load. Prometheus scrapes the router, the stand-ins and
the operator. The model stand-in is scraped once more with the labels the
docs' PodMonitor gives vLLM pods (namespace, inferstack_dev_stack,
inferstack_dev_revision): one stand-in serves every revision here, so its
series carry the stable revision's label.

Then each panel query and annotation of ``inferstack.dashboard`` is run as
Grafana runs it, a range query over the test's span with the template
variables filled in, and must return at least one series with a number.
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import NS_GLOB, kget, kubectl, wait_until

from dataplane import Load
from inferstack.dashboard import all_queries
from scenario import BETTER_PROMPT, FLUENT_WRONG_PROMPT, GOOD_PROMPT, QUALITY_GATE, judged_stack, with_prompt


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    from dataplane import DataPlane

    dp = DataPlane(tmp_path_factory.mktemp("dashboard"), namespace=NS_GLOB, judge=True)
    dp.start()
    yield dp
    dp.stop()


def apply(namespace: str, manifest: dict) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def status(namespace: str) -> dict:
    return (kget("istack", "shop", namespace) or {}).get("status", {})


def targets_file(name: str, targets: list[str], labels: dict[str, str]) -> Path:
    """A file_sd target group for the harness's Prometheus (written atomically)."""
    directory = Path(os.environ["INFERSTACK_PROMETHEUS_TARGETS"])
    tmp = directory / f".{name}.json.tmp"
    tmp.write_text(json.dumps([{"targets": targets, "labels": labels}]))
    path = directory / f"{name}.json"
    tmp.replace(path)
    return path


def query_range(query: str, start: float, end: float) -> list[dict]:
    params = urllib.parse.urlencode({"query": query, "start": start, "end": end, "step": "2s"})
    with urllib.request.urlopen(f"{os.environ['INFERSTACK_PROMETHEUS_URL']}/api/v1/query_range?{params}", timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def has_numbers(result: list[dict]) -> bool:
    return any(math.isfinite(float(v)) for series in result for _, v in series["values"])


def fill(expr: str, namespace: str, span: float) -> str:
    """The template variables as Grafana fills them ($__rate_interval: 4 scrapes of 1 s, at least a step)."""
    return (expr.replace("$namespace", namespace).replace("$stack", "shop")
            .replace("$__rate_interval", "10s").replace("$__range", f"{math.ceil(span)}s"))  # fmt: skip


def test_every_dashboard_query_returns_data_after_a_promotion_and_a_rollback(judged, namespace):
    start = time.time()
    # A PromQL gate (values for both arms) beside the pairwise judge's gate (a difference and its interval).
    manifest = judged_stack("shop", GOOD_PROMPT, [QUALITY_GATE], judge_url=judged.judge_url)
    # A rule check with no gate: its samples feed the score panel without holding the rollout
    # (the pairwise judge's gate, scenario.JUDGE_GATE, decides it).
    manifest["spec"]["evaluation"]["evaluators"].append({"name": "no-refusal", "rule": {"refusal": {}}})
    apply(namespace, manifest)
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "istack/shop", "--timeout=150s")
    stable = status(namespace)["stableRevision"]
    wait_until("the router serving the stack", lambda: judged.serves(f"{namespace}/shop"), timeout=30)
    extra = [
        targets_file(f"dashboard-operator-{judged.operator_metrics_port}", [f"127.0.0.1:{judged.operator_metrics_port}"],
                     {"component": "operator"}),
        targets_file(f"dashboard-vllm-{judged.standin_port}", [f"127.0.0.1:{judged.standin_port}"],
                     {"namespace": namespace, "inferstack_dev_stack": "shop", "inferstack_dev_revision": stable}),
    ]  # fmt: skip
    try:
        with Load(judged.router_url, f"{namespace}/shop", api_key=judged.key_for(namespace)):
            apply(namespace, with_prompt(manifest, BETTER_PROMPT))
            good = wait_until("candidate", lambda: status(namespace).get("candidateRevision"))
            wait_until("promotion", lambda: status(namespace).get("stableRevision") == good, timeout=180)
            apply(namespace, with_prompt(manifest, FLUENT_WRONG_PROMPT))
            wait_until("rollback", lambda: status(namespace).get("phase") == "Degraded", timeout=180)
            time.sleep(3)  # a few more scrapes of the last decision

        queries = all_queries()
        assert len(queries) >= 20, queries

        def empty() -> list[str]:
            end = time.time()
            out = []
            for where, expr in queries:
                query = fill(expr, namespace, end - start)
                if not has_numbers(query_range(query, start, end)):
                    out.append(f"{where}:\n    {query}")
            return out

        deadline = time.monotonic() + 30
        while (missing := empty()) and time.monotonic() < deadline:
            time.sleep(1)
        assert not missing, "dashboard queries without data:\n" + "\n".join(missing)
        # And for another stack there is nothing: every query follows $stack.
        end = time.time()
        leaks = [where for where, expr in queries
                 if query_range(fill(expr, namespace, end - start).replace('"shop"', '"no-such-stack"'), start, end)]  # fmt: skip
        assert not leaks, leaks
    finally:
        for path in extra:
            path.unlink(missing_ok=True)
