"""A real Prometheus scrapes the router, and a gate-style PromQL query sees per-slice checks."""

import json
import os
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import openai
import pytest

from .harness import free_port, http_ok, plan, wait_until, write_plan

REPO = Path(__file__).resolve().parents[2]


def prometheus_binary() -> str:
    """INFERSTACK_PROMETHEUS_BIN (.run/env sets it), else the pinned upstream build if it is cached."""
    if env := os.environ.get("INFERSTACK_PROMETHEUS_BIN"):
        return env
    cached = subprocess.run([REPO / "e2e/prombin/build.sh", "--cached"], capture_output=True, text=True)
    return cached.stdout.strip() if cached.returncode == 0 else "prometheus (not built: run e2e/prombin/build.sh)"


PROMETHEUS = prometheus_binary()

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason=f"Prometheus not found: {PROMETHEUS}"),
]


def query(base: str, promql: str) -> list[dict]:
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)["data"]["result"]


@pytest.fixture
def prometheus(procs, tmp_path: Path):
    def start(target: str) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: router\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        log = (tmp_path / "prometheus.log").open("wb")
        popen = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        procs.started.append(popen)
        base = f"http://127.0.0.1:{port}"
        wait_until("prometheus", lambda: http_ok(base + "/-/ready"), timeout=30, proc=popen)
        return base

    return start


def test_prometheus_scrapes_router_metrics_per_slice(procs, backends, prometheus, tmp_path: Path) -> None:
    stable, candidate = backends
    path = tmp_path / "plan.json"
    write_plan(path, plan(stable, candidate, candidateWeight=50))
    router = procs.router(path, "--slices", "billing,shipping")
    prom = prometheus(router.metrics_target)

    client = openai.OpenAI(base_url=router.url + "/v1", api_key=router.key, max_retries=0)

    def traffic(users: range) -> None:
        for i in users:
            for slice_, question in (("billing", "How do I get a refund?"), ("shipping", "Where is my parcel?")):
                client.chat.completions.create(
                    model="support", messages=[{"role": "user", "content": question}],
                    extra_headers={"x-user-id": f"user-{i}", "x-inferstack-slice": slice_},
                )

    def pass_rate(revision: str, slice_: str) -> str:
        sel = f'check="refusal",revision="{revision}",slice="{slice_}"'
        return (f'sum(increase(inferstack_router_check_total{{{sel},result="pass"}}[1m]))'
                f' / sum(increase(inferstack_router_check_total{{{sel}}}[1m]))')

    def value(promql: str) -> float | None:
        result = query(prom, promql)
        return float(result[0]["value"][1]) if result else None

    # Series are born at the first request, and increase() ignores a series'
    # first sample: let Prometheus see every series once, then send the
    # traffic the gate-style queries measure.
    traffic(range(20))
    wait_until("first scrape", lambda: len(query(prom, 'inferstack_router_check_total{check="refusal"}')) >= 4, timeout=30)
    traffic(range(20, 60))
    rates = [pass_rate(r, s) for r, s in (("rev-a", "billing"), ("rev-b", "billing"), ("rev-b", "shipping"))]
    wait_until("scrape after traffic", lambda: all(v == v and v is not None for v in map(value, rates)), timeout=30)
    assert query(prom, 'up{job="router"}')[0]["value"][1] == "1"
    # The bad prompt on the candidate shows on the billing slice only.
    assert [value(q) for q in rates] == [1.0, 0.0, 1.0]
    assert query(prom, "inferstack_router_request_duration_seconds_bucket")
    assert query(prom, 'inferstack_router_plan_serial{stack="support"}')[0]["value"][1] == "1"
