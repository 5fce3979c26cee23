"""The reconciler's pure core: objects for a revision, scaling, GC, quiet steady state."""

from datetime import UTC, datetime, timedelta

import pytest

from inferstack.api.v1alpha1 import InferenceStackSpec
from inferstack.core.config import OperatorConfig
from inferstack.core.reconcile import DeploymentState, Observed, reconcile, revisions_to_collect, status_patch
from inferstack.core.revision import compute_revision
from inferstack.core.rollout import RolloutState
from inferstack.core.status import INVALID_SPEC, Problem

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CONFIG = OperatorConfig()


def stack(status=None, generation=1):
    return {"metadata": {"name": "bot", "namespace": "ns", "uid": "u", "generation": generation}, "status": status or {}}


def spec(system="s", replicas=1, limit=5, steps=None, gates=None, deadline="20s"):
    rollout = {"revisionHistoryLimit": limit, "progressDeadline": deadline}
    if steps is not None:
        rollout["steps"] = steps
    return InferenceStackSpec.model_validate(
        {
            "model": {"name": "m", "revision": "d" * 40, "replicas": replicas},
            "prompt": {"version": "v1", "system": system},
            "rollout": rollout,
            "gates": gates or [],
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


def test_new_revision_creates_its_three_objects_controller_revision_last():
    sp = spec()
    actions, _ = reconcile(stack(), sp, compute_revision(sp), Observed(), CONFIG, NOW)
    assert [o["kind"] for o in actions.create] == ["Service", "Deployment", "ControllerRevision"]
    assert actions.create[-1]["revision"] == 1


def test_hosted_model_revision_is_only_its_controller_revision():
    sp = InferenceStackSpec.model_validate(
        {"model": {"name": "gpt-x", "gpus": 0, "endpoint": {"url": "https://llm.example.com/v1"}}, "prompt": {"version": "v1", "system": "s"}}
    )
    actions, _ = reconcile(stack(), sp, compute_revision(sp), Observed(), CONFIG, NOW)
    assert [o["kind"] for o in actions.create] == ["ControllerRevision"]


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


# ------------------------------------------------ quiet in every phase

STABLE = "stable0001"
GATE = {"name": "quality", "prometheus": {"query": 'q{revision="{{revision}}"}'}, "compare": {"maxRelativeDrop": 0.1}}
LONG_STEPS = [{"canary": {"weight": 10, "duration": "1h"}}]


def ready(*revs, deadline=False, available=True):
    return Observed(
        revisions={r: i for i, r in enumerate(revs, 1)},
        deployments={r: DeploymentState(1, available, deadline_exceeded=deadline) for r in revs},
    )


def passes(body, sp, observed, count=60, step=timedelta(seconds=2)):
    """Reconcile ``count`` times, ``step`` apart, applying each status patch; writes per pass."""
    rev = compute_revision(sp)
    writes = []
    for i in range(count):
        actions, _ = reconcile(body, sp, rev, observed, CONFIG, NOW + i * step)
        writes.append(actions.writes)
        body = apply_status(body, actions)
    return writes, body


def quiet_case(name):
    """(stack, spec, observed) settled in phase ``name``."""
    if name == "Pending":
        sp = spec()
        return stack(), sp, ready(compute_revision(sp).hash, available=False)
    if name == "Failed: first revision missed its progress deadline":
        sp = spec()
        return stack(), sp, ready(compute_revision(sp).hash, available=False, deadline=True)
    if name == "Healthy":
        sp = spec()
        return stack(), sp, ready(compute_revision(sp).hash)
    if name == "Progressing: held by gates waiting for an analysis":
        sp = spec(system="new", steps=LONG_STEPS, gates=[GATE])
        return stack({"stableRevision": STABLE}), sp, ready(STABLE, compute_revision(sp).hash)
    if name == "Progressing: candidate pods not Ready":
        sp = spec(system="new", steps=LONG_STEPS, gates=[GATE], deadline="30m")
        obs = ready(STABLE, compute_revision(sp).hash)
        obs.deployments[compute_revision(sp).hash] = DeploymentState(1, False)
        return stack({"stableRevision": STABLE}), sp, obs
    if name == "Paused: pause step":
        sp = spec(system="new", steps=[{"canary": {"weight": 10}}, {"pause": {}}])
        st = {"stableRevision": STABLE, "candidateRevision": compute_revision(sp).hash,
              "rollout": {"stepIndex": 1, "stepStartedAt": "2026-11-25T11:00:00Z", "candidateSince": "2026-11-25T10:00:00Z"},
              "traffic": {"candidateWeight": 10}}  # fmt: skip
        return stack(st), sp, ready(STABLE, compute_revision(sp).hash)
    if name == "Degraded: candidate rolled back":
        sp = spec(system="new")
        st = {"stableRevision": STABLE, "rolledBackRevision": compute_revision(sp).hash,
              "rollout": {"rollbackReason": "rolled back revision x to y: gate quality failed"}}  # fmt: skip
        return stack(st), sp, ready(STABLE, compute_revision(sp).hash)
    raise AssertionError(name)


QUIET_PHASES = {
    "Pending": "Pending",
    "Failed: first revision missed its progress deadline": "Failed",
    "Healthy": "Healthy",
    "Progressing: held by gates waiting for an analysis": "Progressing",
    "Progressing: candidate pods not Ready": "Progressing",
    "Paused: pause step": "Paused",
    "Degraded: candidate rolled back": "Degraded",
}


@pytest.mark.parametrize("name", list(QUIET_PHASES))
def test_every_phase_is_quiet_when_nothing_changes(name):
    """Many passes over unchanged observations: the first may write, no later one does.

    The write storm this guards against: a first revision stuck past its
    deadline was Pending for one owner of the phase and Failed for another,
    ~75 status writes a second.
    """
    body, sp, observed = quiet_case(name)
    writes, body = passes(body, sp, observed)
    assert body["status"]["phase"] == QUIET_PHASES[name], body["status"]["message"]
    assert sum(writes[1:]) == 0, writes
    ready_ = {c["type"]: c["status"] for c in body["status"]["conditions"]}["Ready"]
    assert ready_ == ("True" if QUIET_PHASES[name] == "Healthy" else "False")


@pytest.mark.parametrize(
    "problem",
    [
        Problem(INVALID_SPEC, "spec.prompt.configMapRef: ConfigMap p has no key system"),
        Problem("Forbidden", 'creating Service bot-1: services "bot-1" is forbidden: exceeded quota: q'),
    ],
    ids=["invalid-spec", "refused-create"],
)
def test_a_problem_is_shown_once_and_then_quiet(problem):
    body = stack({"stableRevision": STABLE})
    writes = []
    for i in range(30):
        patch = status_patch(body, None, RolloutState.from_status(body["status"]), revision=None,
                             observed=Observed(), now=NOW + i * timedelta(seconds=5), problem=problem)  # fmt: skip
        writes.append(patch is not None)
        body = stack(merge(body["status"], patch or {}))
    assert writes[0] and not any(writes[1:])
    st = body["status"]
    assert (st["phase"], st["message"], st["observedGeneration"]) == ("Failed", problem.message, 1)
    conditions = {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}
    assert conditions == {"Ready": ("False", problem.reason), "Reconciling": ("False", problem.reason), "Stalled": ("True", problem.reason)}
    assert st["stableRevision"] == STABLE  # the rollout's memory is kept, not reset


def test_the_problem_clears_when_the_cause_is_gone():
    sp = spec()
    rev = compute_revision(sp)
    body = stack()
    problem = Problem("Forbidden", "creating Service x: exceeded quota")
    patch = status_patch(body, sp, RolloutState(), revision=rev.hash, observed=Observed(), now=NOW, problem=problem)
    body = stack(merge(body["status"], patch))
    assert body["status"]["phase"] == "Failed"
    actions, _ = reconcile(body, sp, rev, ready(rev.hash), CONFIG, NOW)
    assert actions.status["phase"] == "Healthy"
    assert {c["type"]: c["status"] for c in actions.status["conditions"]}["Stalled"] == "False"


def test_messages_fit_one_line():
    long = "line one\n" + "x" * 1000
    patch = status_patch(stack(), None, RolloutState(), revision=None, observed=Observed(), now=NOW, problem=Problem("InternalError", long))
    assert "\n" not in patch["message"] and len(patch["message"]) <= 240


# ------------------------------------------------ the pre-traffic index check


def test_a_candidate_whose_index_version_is_missing_waits_without_traffic_then_rolls_back():
    from dataclasses import replace

    from inferstack.core.indexcheck import IndexVerdict

    first, second = spec(system="s1"), spec(system="s2", steps=[{"canary": {"weight": 10, "duration": "1h"}}])
    stable, candidate = compute_revision(first).hash, compute_revision(second).hash
    body = stack({"stableRevision": stable, "phase": "Healthy"})
    missing = IndexVerdict(False, "IndexMissing", "index docs version v2 does not exist in the store: build it, or pin a version that exists")
    observed = replace(ready(stable, candidate), index_verdicts={candidate: missing})
    actions, decision = reconcile(body, second, compute_revision(second), observed, CONFIG, NOW)
    assert decision.state.candidate == candidate and decision.state.step_index is None  # waits: no step, no traffic
    assert decision.traffic.candidate is None and decision.traffic.candidate_weight == 0
    message = actions.status["message"]
    assert message.startswith(f"waiting for revision {candidate}: index docs version v2 does not exist") and "(IndexMissing)" in message
    conditions = {c["type"]: c for c in actions.status["conditions"]}
    assert (conditions["Reconciling"]["status"], conditions["Reconciling"]["reason"]) == ("True", "IndexMissing")
    assert conditions["Ready"]["reason"] == "Progressing"  # Ready keeps the phase
    body = apply_status(body, actions)
    # The progress deadline (20s) still applies, and the rollback says why.
    actions, decision = reconcile(body, second, compute_revision(second), observed, CONFIG, NOW + timedelta(seconds=30))
    assert decision.state.rolled_back == candidate and "not ready within progressDeadline 20s: index docs version v2" in decision.state.rollback_reason
    # The same candidate with its index ready goes to its first step.
    ok = replace(observed, index_verdicts={candidate: IndexVerdict(True, "IndexReady", "ready")})
    _, decision = reconcile(stack({"stableRevision": stable, "phase": "Healthy"}), second, compute_revision(second), ok, CONFIG, NOW)
    assert decision.state.step_index == 0 and decision.traffic.candidate_weight == 10
