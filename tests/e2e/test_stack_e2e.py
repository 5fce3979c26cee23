"""InferenceStack on the real API server: validation, revisions, status, restarts."""

from __future__ import annotations

import copy
import json
import signal

import pytest
import yaml
from conftest import REPO, kget, kubectl, store_secret, wait_until

BASE = {
    "apiVersion": "inferstack.dev/v1alpha1",
    "kind": "InferenceStack",
    "metadata": {"name": "bad"},
    "spec": {"model": {"name": "m", "revision": "a" * 40, "gpus": 1}, "prompt": {"version": "v1", "system": "hi"}},
}


def mutate(fn):
    doc = copy.deepcopy(BASE)
    fn(doc)
    return doc


RETRIEVER = {"embedding": {"model": "e"}, "index": {"name": "i", "version": "1"}}

# (case, manifest, what the API server must say)
BAD_MANIFESTS = [
    ("unpinned-revision", mutate(lambda d: d["spec"]["model"].pop("revision")), "spec.model.revision must pin the weights"),
    ("branch-as-revision", mutate(lambda d: d["spec"]["model"].update(revision="main")), "40-character commit hash"),
    ("negative-gpus", mutate(lambda d: d["spec"]["model"].update(gpus=-1)), "spec.model.gpus in body should be greater than or equal to 0"),
    ("gpus-not-tensor-parallel", mutate(lambda d: d["spec"]["model"].update(gpus=2)), "spec.model.gpus must equal engine.tensorParallelSize"),
    ("canary-decreasing", mutate(lambda d: d["spec"].update(rollout={"steps": [{"canary": {"weight": 25}}, {"canary": {"weight": 5}}]})), "canary weights must be strictly increasing"),
    ("canary-repeated", mutate(lambda d: d["spec"].update(rollout={"steps": [{"canary": {"weight": 5}}, {"canary": {"weight": 5}}]})), "canary weights must be strictly increasing"),
    ("canary-over-100", mutate(lambda d: d["spec"].update(rollout={"steps": [{"canary": {"weight": 150}}]})), "spec.rollout.steps[0].canary.weight in body should be less than or equal to 100"),
    ("step-with-two-kinds", mutate(lambda d: d["spec"].update(rollout={"steps": [{"canary": {"weight": 5}, "pause": {}}]})), "exactly one of shadow, canary, pause, ramp"),
    ("missing-prompt", mutate(lambda d: d["spec"].pop("prompt")), "spec.prompt: Required value"),
    ("prompt-two-sources", mutate(lambda d: d["spec"]["prompt"].update(configMapRef={"name": "p", "key": "k"})), "exactly one of system (inline text) or configMapRef"),
    ("bad-duration", mutate(lambda d: d["spec"].update(rollout={"analysisInterval": "soon"})), "spec.rollout.analysisInterval in body should match"),
    ("gpu-memory-over-1", mutate(lambda d: d["spec"]["model"].update(engine={"gpuMemoryUtilization": 1.5})), "gpuMemoryUtilization in body should be less than or equal to 1"),
    ("unknown-pool", mutate(lambda d: d["spec"]["model"].update(pool="spot")), 'spec.model.pool: Unsupported value: "spot"'),
    ("gate-threshold-and-compare", mutate(lambda d: d["spec"].update(gates=[{"name": "g", "prometheus": {"query": "up"}, "threshold": {"min": 1}, "compare": {"maxRelativeDrop": 0.1}}])), "exactly one of threshold (absolute) or compare"),
    ("gateway-without-parents", mutate(lambda d: d["spec"].update(traffic={"provider": "GatewayAPI"})), "gatewayApi.parentRefs is required"),
    ("endpoint-with-gpus", mutate(lambda d: d["spec"]["model"].update(endpoint={"url": "https://api.example.com/v1"})), "spec.model.gpus must be 0 when spec.model.endpoint is set"),
    ("name-too-long", mutate(lambda d: d["metadata"].update(name="x" * 60)), "metadata.name must be at most 52 characters"),
    ("retriever-topk-zero", mutate(lambda d: d["spec"].update(retriever={**RETRIEVER, "topK": 0})), "spec.retriever.topK in body should be greater than or equal to 1"),
    ("unknown-field", mutate(lambda d: d["spec"]["model"].update(gpu=1)), 'unknown field "spec.model.gpu"'),
]


@pytest.mark.parametrize("case,manifest,message", BAD_MANIFESTS, ids=[c[0] for c in BAD_MANIFESTS])
def test_bad_manifest_is_refused_with_a_clear_message(namespace, case, manifest, message):
    proc = kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False)
    assert proc.returncode != 0, f"{case} was accepted"
    assert message in proc.stderr, proc.stderr
    assert kget("istack", manifest["metadata"]["name"], namespace) is None


def test_embedding_change_needs_a_new_index_version(namespace):
    good = mutate(lambda d: d["spec"].update(retriever=copy.deepcopy(RETRIEVER)))
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(good))
    same_index = copy.deepcopy(good)
    same_index["spec"]["retriever"]["embedding"]["model"] = "e5-large"
    proc = kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(same_index), check=False)
    assert proc.returncode != 0
    assert "spec.retriever.index.version must change when spec.retriever.embedding changes" in proc.stderr
    new_index = copy.deepcopy(same_index)
    new_index["spec"]["retriever"]["index"]["version"] = "2"
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(new_index))


# ---------------------------------------------------------------- lifecycle


def owned(namespace: str, stack: str) -> dict[str, list[dict]]:
    out = {}
    for kind in ("deployments", "services", "controllerrevisions", "configmaps", "trafficplans"):
        items = json.loads(kubectl("get", kind, "-n", namespace, "-l", f"inferstack.dev/stack={stack}", "-o", "json").stdout)["items"]
        out[kind] = items
    return out


def revisions_of(namespace: str, stack: str) -> set[str]:
    return {o["metadata"]["labels"]["inferstack.dev/revision"] for o in owned(namespace, stack)["controllerrevisions"]}


def condition(obj: dict, ctype: str) -> str | None:
    for c in (obj or {}).get("status", {}).get("conditions", []):
        if c["type"] == ctype:
            return c["status"]
    return None


def test_example_becomes_ready_and_a_change_makes_exactly_one_revision(namespace, operator):
    manifest = yaml.safe_load((REPO / "examples/chat-assistant.yaml").read_text())
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    name = manifest["metadata"]["name"]

    # the three objects of the first revision; no ConfigMap, and the only TrafficPlan is the stack's own
    revision_kinds = ("deployments", "services", "controllerrevisions")
    objs = wait_until("the first revision's objects", lambda: (o := owned(namespace, name)) and all(o[k] for k in revision_kinds) and o, timeout=60)
    assert len(objs["deployments"]) == len(objs["services"]) == len(objs["controllerrevisions"]) == 1
    assert objs["configmaps"] == []
    assert [p["metadata"]["name"] for p in objs["trafficplans"]] in ([], [f"{name}-traffic"])
    dep = objs["deployments"][0]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--revision" in container["args"] and manifest["spec"]["model"]["revision"] in container["args"]
    assert dep["metadata"]["ownerReferences"][0]["kind"] == "InferenceStack"

    # pods Ready through kwok -> Ready=True, and kubectl wait agrees
    kubectl("wait", "-n", namespace, "--for=condition=Ready", f"istack/{name}", "--timeout=150s")
    stack = kget("istack", name, namespace)
    first = stack["status"]["stableRevision"]
    assert stack["status"]["phase"] == "Healthy"
    assert stack["status"]["observedGeneration"] == stack["metadata"]["generation"]
    assert condition(stack, "Reconciling") == "False" and condition(stack, "Stalled") == "False"
    table = kubectl("get", "istack", name, "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:6] == ["NAME", "PHASE", "STABLE", "CANDIDATE", "STEP", "WEIGHT"]
    assert "Healthy" in row and first in row

    # a prompt change -> exactly one new revision with its three objects
    manifest["spec"]["prompt"]["system"] = "You are terse."
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    revs = wait_until("a second revision", lambda: len(r := revisions_of(namespace, name)) == 2 and r, timeout=60)
    second = (revs - {first}).pop()
    objs = owned(namespace, name)
    for kind in revision_kinds:
        assert sorted(o["metadata"]["labels"]["inferstack.dev/revision"] for o in objs[kind]) == sorted(revs), kind
    numbers = sorted(o["revision"] for o in objs["controllerrevisions"])
    assert numbers == [1, 2]
    stack = wait_until("candidate in status", lambda: (s := kget("istack", name, namespace))["status"].get("candidateRevision") == second and s)
    assert stack["status"]["stableRevision"] == first

    # a replicas change is not a revision
    manifest["spec"]["model"]["replicas"] = 2
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    wait_until("stable scaled to 2", lambda: (d := kget("deployment", f"{name}-{first}", namespace)) and d["spec"]["replicas"] == 2)
    assert revisions_of(namespace, name) == revs


def test_operator_restart_is_a_no_op(namespace, operator, pgstore):
    manifest = yaml.safe_load((REPO / "examples/rag-support-bot.yaml").read_text())
    name = manifest["metadata"]["name"]
    # The example's retriever searches a real store: its pinned index version must be there and filled
    # (the pre-traffic check, core/indexcheck.py), as its comment tells a user to make it.
    retriever = manifest["spec"]["retriever"]
    table = f"{retriever['index']['name']}__{retriever['index']['version']}"
    if not pgstore.sql("SELECT 1 FROM pg_tables WHERE tablename = $1", table):
        pgstore.create_index(table, retriever["embedding"]["dimension"], [("kb-1", "Refunds above 500 EUR are escalated.", {"title": "Refunds"})])
    store_secret(namespace, retriever["store"]["secretRef"]["name"], pgstore.dsn)
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    kubectl("wait", "-n", namespace, "--for=condition=Ready", f"istack/{name}", "--timeout=150s")
    # settle: the plan and status are written once, then nothing changes
    wait_until("operator idle", lambda: operator.value("inferstack_operator_reconciles_total", namespace=namespace, stack=name) >= 3)

    def versions():
        objs = owned(namespace, name)
        rv = {(k, o["metadata"]["name"]): o["metadata"]["resourceVersion"] for k, items in objs.items() for o in items if k != "deployments"}
        stack = kget("istack", name, namespace)
        rv[("istack", name)] = stack["metadata"]["resourceVersion"]
        return rv

    before = versions()
    operator.stop(signal.SIGKILL)
    operator.start()
    wait_until(
        "three reconcile passes after restart",
        lambda: operator.value("inferstack_operator_reconciles_total", namespace=namespace, stack=name) >= 3,
        timeout=60,
    )
    assert versions() == before
    # Only this test's namespace: an earlier test's namespace may still be terminating.
    writes = {
        dict(ls)["kind"] + " " + dict(ls)["verb"]: v
        for (n, ls), v in operator.metrics().items()
        if n == "inferstack_operator_api_writes_total" and v and dict(ls)["namespace"] == namespace
    }
    assert not writes, f"restarted operator wrote: {writes}"
