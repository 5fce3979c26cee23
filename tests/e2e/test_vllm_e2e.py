"""Real vLLM as the model server: the Deployment the operator writes, run on this machine's CPU.

The operator reconciles a stack of the tiny model (e2e/vllmbin/tinymodel.py: random weights,
made locally) on the local control plane. The test plays the kubelet for the model
container: it reads the Deployment back and starts vLLM from exactly its args and env,
mapped to this machine as e2e/vllmrun.py documents (entrypoint, model cache volume, pod
port); the revision's Service is a path on e2e/vllmrun.ServiceProxy. Clients go through
the router with the official openai client and API keys of two tenants; Prometheus
scrapes vLLM's real /metrics with the PodMonitor's labels.

The tests share one stack and run in order: serve, tenant isolation, a rollout to a
second revision (other engine args), a killed candidate rolled back. At most two vLLM
processes (~4 GiB each) run at once, and none is left running.
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import NS_GLOB, PREFIX, kget, kubectl, scrape, wait_until

import vllmrun
from dataplane import DataPlane, PlanRecorder, create_api_key, key_accepted, prometheus_query

STACK = "tiny"
PVC = "tiny-models"
MAX_VLLM = 2  # ~4 GiB RSS each on a 24 GiB, 2-core machine

# A latency guardrail on vLLM's own histogram, selecting the revision's pods by the
# labels the documented PodMonitor gives them (docs/operations.md).
VLLM_LATENCY_QUERY = (
    "histogram_quantile(0.95, sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket"
    '{namespace="{{namespace}}",pod=~"{{stack}}-{{revision}}-.*"}[{{window}}])))'
)
VLLM_LATENCY_MAX = 10.0  # seconds; the tiny model answers in well under one on 2 cores
_ROUTER = 'namespace="{{namespace}}",stack="{{stack}}",revision="{{revision}}"'
_ERRORS = f"(sum(rate(inferstack_router_errors_total{{{_ROUTER}}}[{{{{window}}}}])) or vector(0))"
_ANSWERED = f"(sum(rate(inferstack_router_requests_total{{{_ROUTER}}}[{{{{window}}}}])) or vector(0))"
GATES = [
    {"name": "vllm-p95-latency", "kind": "Guardrail", "prometheus": {"query": VLLM_LATENCY_QUERY},
     "threshold": {"max": VLLM_LATENCY_MAX}},
    {"name": "error-rate", "kind": "Guardrail", "prometheus": {"query": f"{_ERRORS} / ({_ANSWERED} + {_ERRORS})"},
     "threshold": {"max": 0.05}},
]  # fmt: skip


def tiny_stack(inst: vllmrun.Install, steps: list[dict[str, Any]], **engine: Any) -> dict[str, Any]:
    return {
        "apiVersion": "inferstack.dev/v1alpha1",
        "kind": "InferenceStack",
        "metadata": {"name": STACK},
        "spec": {
            "model": {
                "name": vllmrun.TINY_MODEL,
                "revision": inst.tiny_revision,
                "gpus": 1,
                "cacheVolume": {"persistentVolumeClaim": PVC},
                # On vLLM's CPU backend --gpu-memory-utilization is the share of host memory it reserves.
                "engine": {
                    "gpuMemoryUtilization": 0.1,
                    "maxModelLen": 2048,
                    "extraArgs": ["--enforce-eager"],
                    **engine,
                },
            },
            "prompt": {"version": "v1", "system": "You are a tiny test model."},
            "rollout": {
                "analysisInterval": "1s",
                "progressDeadline": "600s",
                "scaleDownDelay": "2s",
                "steps": steps,
            },
            "gates": GATES,
        },
    }


# Held before any traffic until the candidate's vLLM answers its startup probe (kwok makes
# pods Ready at once; a real kubelet would hold the Deployment instead), then `promote`.
PAUSE: dict[str, Any] = {"pause": {}}


@dataclass
class VLLMDataPlane(DataPlane):
    """The harness's router and operator, with the revisions' Services on the ServiceProxy."""

    backend_url_template: str = ""

    def operator_config(self) -> Path:
        path = super().operator_config()
        config = yaml.safe_load(path.read_text())
        config["backendUrlTemplate"] = self.backend_url_template
        path.write_text(yaml.safe_dump(config))
        return path


@dataclass
class Kubelet:
    """Runs one vLLM per revision Deployment with replicas > 0, and stops it at 0."""

    namespace: str
    inst: vllmrun.Install
    proxy: vllmrun.ServiceProxy
    log_dir: Path
    running: dict[str, vllmrun.VLLM] = field(default_factory=dict)
    targets: list[Path] = field(default_factory=list)

    def start(self, revision: str) -> vllmrun.VLLM:
        name = f"{STACK}-{revision}"
        deployment = wait_until(
            f"Deployment {name}", lambda: kget("deployment", name, self.namespace), timeout=30
        )
        alive = [n for n, v in self.running.items() if v.alive()]
        assert len(alive) < MAX_VLLM, f"already {alive} running; at most {MAX_VLLM} vLLM at once"
        taken = {v.cpu for v in self.running.values()}
        cpu = (
            next(c for c in range(os.cpu_count() or 1) if c not in taken)
            if len(taken) < (os.cpu_count() or 1)
            else None
        )
        server = self.running[name] = vllmrun.VLLM(
            name, self.namespace, deployment, self.inst, self.log_dir, cpu=cpu
        )
        server.start()
        self.proxy.endpoints[(self.namespace, name)] = server.port
        pods = wait_until(f"a pod of {name}", lambda: self._pods(revision), timeout=30)
        labels = {"namespace": self.namespace, "pod": pods[0], "container": "vllm"}
        self.targets.append(
            vllmrun.write_scrape_target(f"vllm-{self.namespace}-{name}", f"127.0.0.1:{server.port}", labels)
        )
        return server

    def _pods(self, revision: str) -> list[str]:
        out = kubectl(
            "get", "pods", "-n", self.namespace, "-l", f"inferstack.dev/revision={revision}", "-o", "json"
        ).stdout
        return [p["metadata"]["name"] for p in json.loads(out)["items"]]

    def stop(self, name: str) -> None:
        self.proxy.endpoints.pop((self.namespace, name), None)
        if server := self.running.pop(name, None):
            server.stop()

    def sync(self) -> None:
        """Stop the vLLM of every Deployment scaled to zero (the old stable after scaleDownDelay)."""
        for name in list(self.running):
            dep = kget("deployment", name, self.namespace)
            if dep is None or dep["spec"]["replicas"] == 0:
                self.stop(name)

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)
        for target in self.targets:
            target.unlink(missing_ok=True)


@dataclass
class Rig:
    namespace: str
    inst: vllmrun.Install
    dp: VLLMDataPlane
    kubelet: Kubelet
    keys: dict[str, str]  # tenant -> API key
    state: dict[str, Any] = field(default_factory=dict)

    def client(self, tenant: str = "a", user: str = "user-1"):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.dp.router_url}/v1", api_key=self.keys[tenant], max_retries=0, timeout=60,
                      default_headers={"x-user-id": user})  # fmt: skip


def _volume(namespace: str) -> None:
    """A PV/PVC pair bound by the controller-manager: the "weights" volume the model pods mount."""
    pv = {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{namespace}-{PVC}"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": "/models"},
                 "claimRef": {"namespace": namespace, "name": PVC}},
    }  # fmt: skip
    pvc = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": PVC, "namespace": namespace},
        "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": pv["metadata"]["name"],
                 "resources": {"requests": {"storage": "1Gi"}}},
    }  # fmt: skip
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [pv, pvc]}))
    wait_until(
        "the weights PVC bound",
        lambda: (kget("pvc", PVC, namespace) or {}).get("status", {}).get("phase") == "Bound",
        timeout=60,
    )


@pytest.fixture(scope="module")
def rig(tmp_path_factory) -> Iterator[Rig]:
    inst = vllmrun.install_or_skip()
    log_dir = tmp_path_factory.mktemp("vllm")
    namespace = f"{PREFIX}-vllm-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    proxy = vllmrun.ServiceProxy().start()
    dp = VLLMDataPlane(log_dir, namespace=NS_GLOB, backend_url_template=proxy.url_template)
    kubelet = Kubelet(namespace, inst, proxy, log_dir)
    try:
        dp.start()
        _volume(namespace)
        keys = {t: create_api_key(namespace, name=f"tenant-{t}", tenant=t) for t in ("a", "b")}
        for key in keys.values():
            wait_until(
                "the router to accept the key", lambda k=key: key_accepted(dp.router_url, k), timeout=30
            )
        yield Rig(namespace, inst, dp, kubelet, keys)
    finally:
        kubelet.stop_all()
        dp.stop()
        proxy.stop()
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        kubectl("delete", "pv", f"{namespace}-{PVC}", "--wait=false", check=False)


def apply(rig: Rig, manifest: dict[str, Any]) -> None:
    kubectl("apply", "-n", rig.namespace, "-f", "-", input=json.dumps(manifest))


def status(rig: Rig) -> dict[str, Any]:
    return (kget("istack", STACK, rig.namespace) or {}).get("status", {})


def promote(rig: Rig) -> None:
    """`kubectl istack promote`: one merge patch of the command annotations."""
    command_id = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    kubectl("annotate", "--overwrite", "-n", rig.namespace, f"istack/{STACK}",
            "inferstack.dev/command=promote", f"inferstack.dev/command-id={command_id}")  # fmt: skip


def vllm_counter(server: vllmrun.VLLM, name: str) -> float:
    return sum(v for (n, _), v in scrape(f"{server.url}/metrics").items() if n == name)


def serves(rig: Rig) -> bool:
    request = urllib.request.Request(
        f"{rig.dp.router_url}/v1/models", headers={"Authorization": f"Bearer {rig.keys['a']}"}
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        return any(m["id"].split("/")[-1] == STACK for m in json.loads(r.read())["data"])


class Traffic:
    """Chat requests through the router from many users, recording (revision, status, error type) of each."""

    def __init__(self, rig: Rig, threads: int = 2) -> None:
        self.rig, self.results = rig, []  # type: list[tuple[str, int, str]]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        deadline = time.monotonic() + 600  # bounded even if a test forgets to stop it
        while not self._stop.is_set() and time.monotonic() < deadline:
            body = {"model": STACK, "messages": [{"role": "user", "content": f"Where is my parcel {rng.randrange(100)}?"}],
                    "max_tokens": 8}  # fmt: skip
            headers = {"Authorization": f"Bearer {self.rig.keys['a']}", "Content-Type": "application/json",
                       "x-user-id": f"user-{rng.randrange(200)}"}  # fmt: skip
            req = urllib.request.Request(
                f"{self.rig.dp.router_url}/v1/chat/completions", json.dumps(body).encode(), headers
            )
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    json.loads(r.read())
                    self.results.append((r.headers.get("x-inferstack-revision", "?"), r.status, ""))
            except urllib.error.HTTPError as e:
                error = json.loads(e.read() or b"{}").get("error", {})
                self.results.append(
                    (e.headers.get("x-inferstack-revision", "?"), e.code, str(error.get("type")))
                )
            except OSError as e:
                self.results.append(("?", 0, type(e).__name__))
            time.sleep(0.1)

    def by_revision(self) -> Counter:
        return Counter((rev, status) for rev, status, _ in self.results)

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=90)


# ---------------------------------------------------------------------------- tests


def test_the_operators_deployment_runs_as_real_vllm_and_serves_through_the_router(rig):
    from inferstack.core.promql import render

    apply(rig, tiny_stack(rig.inst, [PAUSE, {"canary": {"weight": 50, "duration": "5s"}}]))
    stable = wait_until("stable revision", lambda: status(rig).get("stableRevision"), timeout=60)
    server = rig.kubelet.start(stable)
    rig.state["stable"] = stable
    kubectl("wait", "-n", rig.namespace, "--for=condition=Ready", f"istack/{STACK}", "--timeout=150s")
    wait_until("the router serves the stack", lambda: serves(rig), timeout=30)

    # what vLLM was started with is the container's args, mapped as vllmrun says
    container = vllmrun.model_container(server.deployment)
    cmd = json.loads((server.log_dir / f"vllm-{server.name}.cmd").read_text())
    assert cmd[1:2] == ["serve"] and cmd[2:-2] == [
        a if a != "8000" else str(server.port) for a in container["args"]
    ]
    assert {"name": "HF_HOME", "value": "/models"} in container["env"]

    # the kubelet's probes, answered by vLLM itself
    for kind, url in vllmrun.probe_urls(server.deployment, server.port).items():
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.status == 200, (kind, url)

    client = rig.client()
    answer = client.chat.completions.create(
        model=STACK, messages=[{"role": "user", "content": "Hello, who are you?"}], max_tokens=16
    )
    assert answer.choices[0].finish_reason in ("length", "stop")
    assert answer.usage is not None and answer.usage.completion_tokens > 0 and answer.usage.prompt_tokens > 0
    raw = client.chat.completions.with_raw_response.create(
        model=STACK, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert raw.headers["x-inferstack-revision"] == stable

    chunks = list(client.chat.completions.create(
        model=STACK, messages=[{"role": "user", "content": "Tell me about refunds."}], max_tokens=16,
        stream=True, stream_options={"include_usage": True},
    ))  # fmt: skip
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 2, chunks
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= len(deltas)

    # Prometheus scrapes vLLM's real /metrics under the pod's labels
    sel = f'namespace="{rig.namespace}",pod=~"{STACK}-{stable}-.*"'
    for metric in ("vllm:e2e_request_latency_seconds_count", "vllm:time_to_first_token_seconds_count",
                   "vllm:num_requests_running", "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"):  # fmt: skip
        wait_until(f"{metric} in Prometheus", lambda m=metric: prometheus_query(f"{m}{{{sel}}}"), timeout=30)
    counted = float(prometheus_query(f"sum(vllm:e2e_request_latency_seconds_count{{{sel}}})")[0]["value"][1])
    # rate() needs increases it saw: answers after the first scrapes, not only before
    for _ in range(3):
        client.chat.completions.create(
            model=STACK, messages=[{"role": "user", "content": "Where is my parcel?"}], max_tokens=8
        )
    wait_until("3 more requests in Prometheus", lambda: float(prometheus_query(f"sum(vllm:e2e_request_latency_seconds_count{{{sel}}})")[0]["value"][1]) >= counted + 3, timeout=30)  # fmt: skip

    # the latency guardrail, rendered by the operator's own code, evaluated on that real data
    query = render(VLLM_LATENCY_QUERY, stack=STACK, namespace=rig.namespace, revision=stable, baseline=stable, slice_="",
                   window=timedelta(minutes=2))  # fmt: skip

    def p95() -> float | None:
        result = prometheus_query(query)
        value = float(result[0]["value"][1]) if result else math.nan
        return value if not math.isnan(value) else None

    value = wait_until("a p95 of vllm:e2e_request_latency_seconds", p95, timeout=30)
    assert 0 < value < VLLM_LATENCY_MAX, value


def test_tenants_share_no_prefix_cache_in_vllm(rig):
    server = rig.kubelet.running[f"{STACK}-{rig.state['stable']}"]
    nonce = uuid.uuid4().hex
    words = [
        "order",
        "refund",
        "parcel",
        "delivery",
        "address",
        "payment",
        "invoice",
        "account",
        "password",
        "tracking",
        "label",
        "return",
    ]
    prompt = nonce + " " + " ".join(words[(i * 7) % len(words)] + str(i) for i in range(300))

    def ask(tenant: str, max_tokens: int) -> tuple[float, int]:
        before = vllm_counter(server, "vllm:prefix_cache_hits_total")
        answer = rig.client(tenant).chat.completions.create(
            model=STACK, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens
        )
        assert answer.usage is not None
        return vllm_counter(server, "vllm:prefix_cache_hits_total") - before, answer.usage.prompt_tokens

    first, prompt_tokens = ask("a", 4)
    assert prompt_tokens > 3 * 128, "long enough for several full 128-token blocks"
    assert first == 0
    other_tenant, _ = ask("b", 5)
    assert other_tenant == 0, (
        "tenant b hit tenant a's cached blocks: the router's cache_salt does not isolate tenants"
    )
    same_tenant, _ = ask("a", 6)
    assert same_tenant >= 3 * 128, (
        f"the same tenant's second identical prompt should hit its cached blocks ({same_tenant})"
    )


def test_a_rollout_between_two_real_revisions_goes_shadow_canary_to_promotion(rig):
    stable = rig.state["stable"]
    steps = [
        PAUSE,
        {"shadow": {"percent": 50, "duration": "4s"}},
        {"canary": {"weight": 50, "duration": "6s"}},
    ]
    with PlanRecorder(rig.namespace, STACK) as plans, Traffic(rig) as traffic:
        wait_until("traffic flowing", lambda: len(traffic.results) >= 3, timeout=30)
        apply(rig, tiny_stack(rig.inst, steps, maxModelLen=1024))  # new engine args: a new revision
        cand = wait_until("candidate", lambda: status(rig).get("candidateRevision"), timeout=60)
        assert cand != stable
        rig.kubelet.start(cand)
        promote(rig)  # the candidate's vLLM answers: end the pause
        seen: list[dict[str, Any]] = []

        def promoted() -> bool:
            s = status(rig)
            if s.get("candidateRevision") == cand:
                seen.extend(s.get("gates") or [])
            return s.get("stableRevision") == cand and s.get("phase") == "Healthy"

        wait_until("promotion", promoted, timeout=180, interval=0.5)
        wait_until("answers from the new stable", lambda: traffic.by_revision()[(cand, 200)] >= 3, timeout=30)
    # the pause sends the candidate nothing; then each step of the spec once, in order
    assert [(w, sh) for (_, c, w, sh) in plans.steps() if c == cand and (w, sh) != (0, 0)] == [
        (0, 50),
        (50, 0),
    ], plans.steps()
    assert plans.steps()[-1] == (cand, None, 0, 0)
    failures = [r for r in traffic.results if r[1] != 200]
    assert not failures, failures
    assert traffic.by_revision()[(stable, 200)] > 0 and traffic.by_revision()[(cand, 200)] > 0
    latency = [g for g in seen if g["gate"] == "vllm-p95-latency" and g.get("verdict") == "Pass"]
    assert latency, f"the vLLM latency gate never passed on real data: {seen}"
    rig.state.update(stable=cand, previous=stable)
    # the old revision goes to zero replicas after scaleDownDelay: its vLLM stops
    wait_until(
        "old stable scaled to zero",
        lambda: kget("deployment", f"{STACK}-{stable}", rig.namespace)["spec"]["replicas"] == 0,
        timeout=60,
    )
    rig.kubelet.sync()
    assert list(rig.kubelet.running) == [f"{STACK}-{cand}"]


def test_a_candidate_whose_vllm_is_killed_mid_canary_is_rolled_back(rig):
    stable = rig.state["stable"]
    steps = [PAUSE, {"canary": {"weight": 50, "duration": "10m"}}]  # only a rollback ends this canary
    with PlanRecorder(rig.namespace, STACK) as plans, Traffic(rig) as traffic:
        wait_until("traffic flowing", lambda: len(traffic.results) >= 3, timeout=30)
        apply(rig, tiny_stack(rig.inst, steps, maxModelLen=1024, enablePrefixCaching=False))
        cand = wait_until("candidate", lambda: status(rig).get("candidateRevision"), timeout=60)
        server = rig.kubelet.start(cand)
        promote(rig)
        wait_until(
            "canary 50%", lambda: status(rig).get("traffic", {}).get("candidateWeight") == 50, timeout=60
        )
        wait_until("the candidate answers", lambda: traffic.by_revision()[(cand, 200)] >= 3, timeout=60)
        killed_at = len(traffic.results)
        server.kill()  # SIGKILL of vLLM's whole process group mid-canary
        st = wait_until(
            "rollback", lambda: (s := status(rig)).get("phase") == "Degraded" and s, timeout=120, interval=0.5
        )
        rolled_back_at = len(traffic.results)
        wait_until(
            "answers after the rollback", lambda: len(traffic.results) >= rolled_back_at + 6, timeout=30
        )
    rig.kubelet.stop(f"{STACK}-{cand}")
    assert (
        st["stableRevision"] == stable
        and st["rolledBackRevision"] == cand
        and st.get("candidateRevision") is None
    )
    assert "error-rate" in st["rollout"]["rollbackReason"], st["rollout"]["rollbackReason"]
    assert plans.steps()[-1] == (stable, None, 0, 0), "one write put all traffic back on stable"
    failed = [r for r in traffic.results if r[1] != 200]
    # stable: not one failure; the candidate's failures are clean OpenAI errors, only after the kill
    assert not [r for r in failed if r[0] != cand], failed
    assert failed, "the candidate served canary traffic when it was killed"
    assert all(r[1] == 502 and r[2] == "upstream_error" for r in failed), failed
    # (a request already on its way when the plan switched may still reach the candidate)
    assert all(r[0] == stable and r[1] == 200 for r in traffic.results[-3:]), traffic.results[rolled_back_at:]
    assert [r for r in traffic.results[:killed_at] if r[1] != 200] == []
