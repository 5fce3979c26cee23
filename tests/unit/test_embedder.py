"""The embedding models the operator runs: identity, objects, sharing, GC, and revisions that wait for them."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from inferstack.api.v1alpha1 import VLLM_IMAGE, InferenceStackSpec
from inferstack.core import objects
from inferstack.core.config import GPU_TOLERATION, OperatorConfig
from inferstack.core.embedder import (
    LABEL_EMBEDDER,
    build_embedder_deployment,
    build_embedder_service,
    embedder_args,
    embedder_name,
    embedder_of,
)
from inferstack.core.reconcile import DeploymentState, Observed, reconcile
from inferstack.core.revision import compute_revision
from inferstack.core.trafficplan import traffic_plan

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CONFIG = OperatorConfig()
STACK = {"metadata": {"name": "bot", "namespace": "team-a", "uid": "u-1", "generation": 1}}
BGE = "5c38ec7c405ec4b44b94cc5a9bb96e735b38267a"
BGE_NEXT = "a5beb1e3e68b9ab74eb54cfd186867f64f240e1a"
CPU_VLLM = "registry.example.com/vllm-cpu:v0.32.0"
CANARY = [{"canary": {"weight": 10, "duration": "1h"}}]


def spec(system: str = "s", index: str = "v1", steps: list | None = None, deadline: str = "20s", **embedding: Any) -> InferenceStackSpec:
    """A stack whose retriever names no endpoint: the operator runs its embedding model."""
    emb = {"model": "BAAI/bge-small-en-v1.5", "revision": BGE, "dimension": 384, "image": CPU_VLLM, **embedding}
    emb = {k: v for k, v in emb.items() if v is not None}
    rollout: dict[str, Any] = {"progressDeadline": deadline}
    if steps is not None:
        rollout["steps"] = steps
    return InferenceStackSpec.model_validate({
        "model": {"name": "m", "revision": "d" * 40},
        "prompt": {"version": "v1", "system": system},
        "retriever": {"embedding": emb, "index": {"name": "docs", "version": index}, "store": {"secretRef": {"name": "store"}}},
        "rollout": rollout,
    })


def with_endpoint(sp: InferenceStackSpec) -> InferenceStackSpec:
    doc = sp.model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["retriever"]["endpoint"] = "http://bge.search.svc:8000"
    doc["retriever"]["embedding"] = {k: doc["retriever"]["embedding"][k] for k in ("model", "revision", "dimension")}
    return InferenceStackSpec.model_validate(doc)


def key_of(sp: InferenceStackSpec) -> str:
    embedder = embedder_of(compute_revision(sp).parts)
    assert embedder is not None
    return embedder.key


# ------------------------------------------------------------------ identity


def test_a_retriever_with_an_endpoint_or_without_a_store_runs_no_embedder():
    assert embedder_of(compute_revision(with_endpoint(spec())).parts) is None
    no_store = spec().model_dump(mode="json", by_alias=True, exclude_none=True)
    del no_store["retriever"]["store"]
    assert embedder_of(compute_revision(InferenceStackSpec.model_validate(no_store)).parts) is None


@pytest.mark.parametrize(
    "change,shared",
    [
        ({"system": "another prompt"}, True),  # revisions that embed the same way share one Deployment
        ({"index": "v2"}, True),
        ({"replicas": 3}, True),  # delivery: not even a new revision
        ({"revision": BGE_NEXT}, False),  # another embedding revision: a new Deployment beside the old one
        ({"model": "intfloat/e5-small-v2"}, False),
        ({"image": "registry.example.com/vllm-cpu:v0.33.0"}, False),
        ({"image": None, "gpus": 1}, False),
        ({"resources": {"limits": {"memory": "4Gi"}}}, False),
        ({"extraArgs": ["--max-model-len=512"]}, False),
    ],
)
def test_the_embedder_key_is_what_the_deployment_runs(change, shared):
    assert (key_of(spec(**change)) == key_of(spec())) is shared


def test_names_fit_and_never_equal_a_revision_name():
    key = key_of(spec())
    assert key.startswith("em") and len(key) == len(compute_revision(spec()).hash) == 10
    assert len(embedder_name("b" * 52, key)) == 63
    int(key[2:], 16)  # a hash...
    with pytest.raises(ValueError):
        int(key, 16)  # ...that no revision hash (10 hex digits) can be


def test_the_deployed_model_changes_the_revision_but_its_replicas_do_not():
    base = compute_revision(spec()).hash
    assert compute_revision(spec(replicas=4)).hash == base
    assert compute_revision(spec(revision=BGE_NEXT)).hash != base
    assert compute_revision(spec(resources={"requests": {"cpu": 2}})).hash != base
    # YAML's cpu: 2 and "2" are the same quantity, and the same revision.
    assert compute_revision(spec(resources={"requests": {"cpu": 2}})).hash == compute_revision(spec(resources={"requests": {"cpu": "2"}})).hash


def test_with_an_endpoint_the_run_fields_are_not_in_the_revision():
    parts = compute_revision(with_endpoint(spec())).parts
    assert set(parts["retriever"]["embedding"]) == {"model", "revision", "dimension"}


# ------------------------------------------------------------------ objects


def test_the_deployment_runs_vllm_with_the_pooling_runner_on_cpu():
    embedder = embedder_of(compute_revision(spec(extraArgs=["--gpu-memory-utilization=0.2"])).parts)
    assert embedder is not None
    dep = build_embedder_deployment(STACK, spec(), embedder, CONFIG, 2)
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == CPU_VLLM and "command" not in c
    assert c["args"] == [
        "--model", "BAAI/bge-small-en-v1.5", "--served-model-name", "BAAI/bge-small-en-v1.5", "--port", "8000",
        "--runner", "pooling", "--revision", BGE, "--gpu-memory-utilization=0.2",
    ]  # fmt: skip
    assert c["resources"] == {} and "tolerations" not in pod
    assert dep["metadata"]["name"] == f"bot-{embedder.key}" and dep["spec"]["replicas"] == 2
    # Probes as a model's: the startup probe allows the stack's progress deadline (20 s here).
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] == 20
    assert dep["spec"]["progressDeadlineSeconds"] == 20
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    labels = dep["metadata"]["labels"]
    assert labels[LABEL_EMBEDDER] == embedder.key and labels[objects.LABEL_COMPONENT] == "embedder"
    assert objects.LABEL_REVISION not in labels  # shared by revisions: it belongs to none
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector == {objects.LABEL_STACK: "bot", LABEL_EMBEDDER: embedder.key}
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    svc = build_embedder_service(STACK, embedder, CONFIG)
    assert svc["metadata"]["name"] == dep["metadata"]["name"] and svc["spec"]["selector"] == selector


def test_a_gpu_embedder_gets_its_gpu_and_the_toleration_beside_its_resources():
    sp = spec(image=None, gpus=1, resources={"requests": {"cpu": "1", "memory": "8Gi"}, "limits": {"memory": "8Gi"}})
    embedder = embedder_of(compute_revision(sp).parts)
    assert embedder is not None and embedder.image == VLLM_IMAGE
    pod = build_embedder_deployment(STACK, sp, embedder, CONFIG, 1)["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {
        "requests": {"cpu": "1", "memory": "8Gi", "nvidia.com/gpu": "1"},
        "limits": {"memory": "8Gi", "nvidia.com/gpu": "1"},
    }
    assert pod["tolerations"] == [GPU_TOLERATION]


def test_an_unpinned_embedder_has_no_revision_flag():
    embedder = embedder_of(compute_revision(spec(revision=None, revisionPolicy="Unpinned")).parts)
    assert embedder is not None and "--revision" not in embedder_args(embedder, 8000)


def test_the_plan_embeds_through_the_embedders_service_and_an_endpoint_is_unchanged():
    sp = spec()
    rev = compute_revision(sp)
    plan = traffic_plan(STACK["metadata"], sp, CONFIG, (rev.hash, rev.parts))
    assert plan.stable.retrieval is not None
    assert plan.stable.retrieval.embedding_url == f"http://bot-{key_of(sp)}.team-a.svc:8000"
    assert plan.stable.retrieval.embedding_model == "BAAI/bge-small-en-v1.5"
    kwok = OperatorConfig(embedder_url_template="http://127.0.0.1:9000/{namespace}/{service}/{stack}/{embedder}")
    assert traffic_plan(STACK["metadata"], sp, kwok, (rev.hash, rev.parts)).stable.retrieval.embedding_url == (
        f"http://127.0.0.1:9000/team-a/bot-{key_of(sp)}/bot/{key_of(sp)}"
    )
    hosted = with_endpoint(sp)
    hrev = compute_revision(hosted)
    assert traffic_plan(STACK["metadata"], hosted, CONFIG, (hrev.hash, hrev.parts)).stable.retrieval.embedding_url == "http://bge.search.svc:8000"


# ------------------------------------------------------------------ the reconciler


def stack(status: dict | None = None) -> dict[str, Any]:
    return {**copy.deepcopy(STACK), "status": status or {}}


def seen(*specs: InferenceStackSpec, embedders: dict[str, DeploymentState] | None = None, ready: bool = True) -> Observed:
    """Every revision's objects exist with Ready model pods; ``embedders`` as given."""
    revs = [compute_revision(s) for s in specs]
    return Observed(
        revisions={r.hash: i for i, r in enumerate(revs, 1)},
        deployments={r.hash: DeploymentState(1, ready) for r in revs},
        parts={r.hash: r.parts for r in revs},
        embedders=embedders or {},
    )


def kinds(manifests: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["kind"], m["metadata"]["name"]) for m in manifests]


def test_a_new_revision_creates_its_embedder_first_and_its_controller_revision_last():
    sp = spec()
    rev = compute_revision(sp)
    actions, decision = reconcile(stack(), sp, rev, Observed(), CONFIG, NOW)
    emb = f"bot-{key_of(sp)}"
    assert kinds(actions.create) == [
        ("Service", emb), ("Deployment", emb), ("Service", f"bot-{rev.hash}"), ("Deployment", f"bot-{rev.hash}"),
        ("ControllerRevision", f"bot-{rev.hash}"),
    ]  # fmt: skip
    assert actions.create[1]["spec"]["replicas"] == 1
    assert decision.state.stable is None


def test_the_first_revision_waits_for_its_embedder_then_is_stable_and_quiet():
    sp = spec()
    rev, key = compute_revision(sp), key_of(sp)
    loading = seen(sp, embedders={key: DeploymentState(1, False)})
    actions, decision = reconcile(stack(), sp, rev, loading, CONFIG, NOW)
    assert decision.state.stable is None and actions.create == []
    assert actions.status["phase"] == "Pending"
    assert actions.status["message"] == (
        f"waiting for revision {rev.hash}: embedding model BAAI/bge-small-en-v1.5@{BGE} (Deployment bot-{key}) "
        "is not Ready yet (EmbedderNotReady)"
    )
    up = seen(sp, embedders={key: DeploymentState(1, True)})
    actions, decision = reconcile(stack(), sp, rev, up, CONFIG, NOW)
    assert decision.state.stable == rev.hash and actions.status["phase"] == "Healthy"
    body = stack({**actions.status})
    actions, _ = reconcile(body, sp, rev, up, CONFIG, NOW + timedelta(minutes=1))
    assert actions.writes == 0, actions


def test_the_first_revision_whose_embedder_misses_the_deadline_is_stalled():
    sp = spec()
    stuck = seen(sp, embedders={key_of(sp): DeploymentState(1, False, deadline_exceeded=True)})
    actions, _ = reconcile(stack(), sp, compute_revision(sp), stuck, CONFIG, NOW)
    assert actions.status["phase"] == "Failed"


def test_two_revisions_with_the_same_embedding_model_share_one_embedder():
    first, second = spec(system="s1"), spec(system="s2", index="v2", steps=CANARY)
    key = key_of(first)
    assert key_of(second) == key
    observed = seen(first, embedders={key: DeploymentState(1, True)})
    rev = compute_revision(second)
    actions, decision = reconcile(stack({"stableRevision": compute_revision(first).hash}), second, rev, observed, CONFIG, NOW)
    assert [k for k, _ in kinds(actions.create)] == ["Service", "Deployment", "ControllerRevision"]  # the revision's own only
    assert actions.scale_embedders == {} and actions.delete_embedders == []
    # Once its objects exist it goes straight to its first step: its embedder is Ready already.
    both = seen(first, second, embedders={key: DeploymentState(1, True)})
    _, decision = reconcile(stack({"stableRevision": compute_revision(first).hash}), second, rev, both, CONFIG, NOW)
    assert decision.state.candidate == rev.hash and decision.state.step_index == 0 and decision.traffic.candidate_weight == 10


def test_a_new_embedding_revision_gets_its_own_deployment_and_the_candidate_waits_for_it():
    first = spec(system="s1")
    second = spec(system="s1", index="v2", revision=BGE_NEXT, steps=CANARY)
    old, new = key_of(first), key_of(second)
    assert old != new
    stable, candidate = compute_revision(first).hash, compute_revision(second).hash
    body = stack({"stableRevision": stable, "phase": "Healthy"})
    actions, _ = reconcile(body, second, compute_revision(second), seen(first, embedders={old: DeploymentState(1, True)}), CONFIG, NOW)
    assert kinds(actions.create)[:2] == [("Service", f"bot-{new}"), ("Deployment", f"bot-{new}")]
    assert actions.delete_embedders == [] and actions.scale_embedders == {}  # the stable revision's stays as it is

    loading = seen(first, second, embedders={old: DeploymentState(1, True), new: DeploymentState(1, False)})
    actions, decision = reconcile(body, second, compute_revision(second), loading, CONFIG, NOW)
    assert decision.state.candidate == candidate and decision.state.step_index is None
    assert decision.traffic.candidate is None and decision.traffic.candidate_weight == 0  # no traffic while it loads
    assert actions.status["message"].startswith(f"waiting for revision {candidate}: embedding model BAAI/bge-small-en-v1.5@{BGE_NEXT}")
    assert actions.status["message"].endswith("(EmbedderNotReady)")

    # The progress deadline still applies, and the rollback says why.
    body = stack({**body["status"], **actions.status})
    actions, decision = reconcile(body, second, compute_revision(second), loading, CONFIG, NOW + timedelta(seconds=30))
    assert decision.state.rolled_back == candidate
    assert f"not ready within progressDeadline 20s: embedding model BAAI/bge-small-en-v1.5@{BGE_NEXT}" in decision.state.rollback_reason
    # Rolled back: the candidate's embedder is kept (the revision is) and scaled like it.
    assert actions.delete_embedders == []

    ready = replace(loading, embedders={old: DeploymentState(1, True), new: DeploymentState(1, True)})
    _, decision = reconcile(stack({"stableRevision": stable, "phase": "Healthy"}), second, compute_revision(second), ready, CONFIG, NOW)
    assert decision.state.step_index == 0 and decision.traffic.candidate_weight == 10


def test_an_embedder_no_live_revision_uses_is_scaled_to_zero_and_back():
    first, second = spec(system="s1"), spec(system="s2", revision=BGE_NEXT, index="v2")
    old, new = key_of(first), key_of(second)
    stable = compute_revision(second).hash  # promoted; the first revision is history
    observed = seen(first, second, embedders={old: DeploymentState(1, True), new: DeploymentState(1, True)})
    actions, _ = reconcile(stack({"stableRevision": stable, "phase": "Healthy"}), second, compute_revision(second), observed, CONFIG, NOW)
    assert actions.scale_embedders == {old: 0} and actions.scale == {compute_revision(first).hash: 0}
    # The spec's replicas follow the live ones, and make no new revision.
    more = spec(system="s2", revision=BGE_NEXT, index="v2", replicas=3)
    assert compute_revision(more).hash == stable
    actions, _ = reconcile(stack({"stableRevision": stable, "phase": "Healthy"}), more, compute_revision(more), observed, CONFIG, NOW)
    assert actions.scale_embedders == {old: 0, new: 3}


def test_an_embedder_is_collected_with_the_last_revision_that_uses_it():
    def limited(sp: InferenceStackSpec, limit: int) -> InferenceStackSpec:
        doc = sp.model_dump(mode="json", by_alias=True, exclude_none=True)
        doc["rollout"]["revisionHistoryLimit"] = limit
        return InferenceStackSpec.model_validate(doc)

    a1, a2 = spec(system="a1"), spec(system="a2", index="v2")  # one embedder
    b = limited(spec(system="b", revision=BGE_NEXT, index="v3"), 1)  # another; stable
    ka, kb = key_of(a1), key_of(b)
    embedders = {ka: DeploymentState(0, True), kb: DeploymentState(1, True)}
    observed = seen(a1, a2, b, embedders=embedders)
    body = stack({"stableRevision": compute_revision(b).hash, "phase": "Healthy"})
    # History limit 1: a1 goes, a2 stays and still uses the shared embedder.
    actions, _ = reconcile(body, b, compute_revision(b), observed, CONFIG, NOW)
    assert actions.delete_revisions == [compute_revision(a1).hash] and actions.delete_embedders == []
    # History limit 0: the last revision using it goes, and the embedder with it, after it.
    b0 = limited(spec(system="b", revision=BGE_NEXT, index="v3"), 0)
    actions, _ = reconcile(body, b0, compute_revision(b0), observed, CONFIG, NOW)
    assert set(actions.delete_revisions) == {compute_revision(a1).hash, compute_revision(a2).hash}
    assert actions.delete_embedders == [ka] and ka not in actions.scale_embedders


def test_a_missing_embedder_of_a_kept_revision_is_created_again():
    sp = spec()
    observed = seen(sp)  # its embedder Deployment was deleted by someone
    actions, _ = reconcile(stack({"stableRevision": compute_revision(sp).hash}), sp, compute_revision(sp), observed, CONFIG, NOW)
    assert kinds(actions.create) == [("Service", f"bot-{key_of(sp)}"), ("Deployment", f"bot-{key_of(sp)}")]
    assert actions.create[1]["spec"]["replicas"] == 1
