"""The reconciler's pure core: objects for a revision, scaling, GC, quiet steady state."""

from datetime import UTC, datetime, timedelta

from inferstack.api.v1alpha1 import InferenceStackSpec
from inferstack.core.config import OperatorConfig
from inferstack.core.reconcile import DeploymentState, Observed, reconcile, revisions_to_collect
from inferstack.core.revision import compute_revision

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CONFIG = OperatorConfig()


def stack(status=None, generation=1):
    return {"metadata": {"name": "bot", "namespace": "ns", "uid": "u", "generation": generation}, "status": status or {}}


def spec(system="s", replicas=1, limit=5):
    return InferenceStackSpec.model_validate(
        {
            "model": {"name": "m", "revision": "d" * 40, "replicas": replicas},
            "prompt": {"version": "v1", "system": system},
            "rollout": {"revisionHistoryLimit": limit},
        }
    )


def merge(old, patch):
    """RFC 7386, as the API server applies a merge patch."""
    out = dict(old)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def apply_status(body, actions):
    return stack(merge(body["status"], actions.status or {}), body["metadata"]["generation"])


def test_new_revision_creates_its_four_objects_controller_revision_last():
    sp = spec()
    actions, _ = reconcile(stack(), sp, compute_revision(sp), Observed(), CONFIG, NOW)
    assert [o["kind"] for o in actions.create] == ["ConfigMap", "Service", "Deployment", "ControllerRevision"]
    assert actions.create[-1]["revision"] == 1


def test_first_revision_becomes_stable_when_ready_then_nothing_is_written():
    sp = spec()
    rev = compute_revision(sp)
    body = stack()
    actions, _ = reconcile(body, sp, rev, Observed(revisions={rev.hash: 1}, deployments={rev.hash: DeploymentState(1, False)}), CONFIG, NOW)
    assert actions.status["phase"] == "Pending" and actions.status.get("stableRevision") is None
    body = apply_status(body, actions)
    ready = Observed(revisions={rev.hash: 1}, deployments={rev.hash: DeploymentState(1, True)})
    actions, _decision = reconcile(body, sp, rev, ready, CONFIG, NOW)
    assert actions.status["stableRevision"] == rev.hash and actions.status["phase"] == "Healthy"
    assert {c["type"]: c["status"] for c in actions.status["conditions"]} == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
    body = apply_status(body, actions)
    # steady state: the same observation later writes nothing at all
    actions, _ = reconcile(body, sp, rev, ready, CONFIG, NOW + timedelta(minutes=5))
    assert actions.writes == 0, actions


def test_first_revision_past_its_deadline_is_stalled():
    sp = spec()
    rev = compute_revision(sp)
    observed = Observed(revisions={rev.hash: 1}, deployments={rev.hash: DeploymentState(1, False, deadline_exceeded=True)})
    actions, _ = reconcile(stack(), sp, rev, observed, CONFIG, NOW)
    assert actions.status["phase"] == "Failed"
    assert {c["type"]: c["status"] for c in actions.status["conditions"]}["Stalled"] == "True"


def test_replicas_change_scales_live_revisions_and_makes_no_new_one():
    sp = spec(replicas=3)
    rev = compute_revision(sp)
    body = stack({"stableRevision": rev.hash})
    observed = Observed(revisions={rev.hash: 1, "old": 0}, deployments={rev.hash: DeploymentState(1, True), "old": DeploymentState(1, True)})
    actions, _ = reconcile(body, sp, rev, observed, CONFIG, NOW)
    assert actions.create == []
    assert actions.scale == {rev.hash: 3, "old": 0}


def test_gc_never_collects_stable_or_candidate():
    observed = Observed(revisions={f"r{i}": i for i in range(1, 9)})
    assert revisions_to_collect(observed, keep={"r1", "r8"}, limit=2) == ["r2", "r3", "r4", "r5"]
    assert revisions_to_collect(observed, keep={"r1"}, limit=50) == []
