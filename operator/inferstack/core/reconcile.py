"""The reconciler's pure core: from what is observed to what must be done.

``reconcile()`` takes the stack, its computed revision and a snapshot of the
objects the operator owns, and returns the actions that move the cluster
towards the desired state. It performs no I/O, so every decision here is
unit-tested without a cluster, and the handlers that call it stay thin.

Invariants this module maintains:

* one revision = bundle, Service, Deployment, ControllerRevision; the
  ControllerRevision is created last and marks the revision complete, so an
  operator killed half-way re-creates the missing pieces and nothing twice;
* the stable and the candidate revision are never garbage-collected;
* when nothing changed, the returned actions are empty: no API writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from inferstack.api.v1alpha1 import InferenceStackSpec, Phase
from inferstack.core import objects
from inferstack.core.config import OperatorConfig
from inferstack.core.revision import Revision, cache_namespace
from inferstack.core.status import READY, RECONCILING, STALLED, ConditionState, merge_conditions


@dataclass(frozen=True)
class DeploymentState:
    replicas: int
    available: bool  # Available=True and every replica updated and ready
    deadline_exceeded: bool = False  # Progressing=False, ProgressDeadlineExceeded


@dataclass(frozen=True)
class Observed:
    """What the operator's watches saw of the objects it owns for one stack."""

    deployments: dict[str, DeploymentState] = field(default_factory=dict)
    revisions: dict[str, int] = field(default_factory=dict)  # hash -> ControllerRevision.revision
    plan_json: str | None = None  # data of the current traffic-plan ConfigMap


@dataclass
class Actions:
    create: list[dict[str, Any]] = field(default_factory=list)  # create if missing, in order
    scale: dict[str, int] = field(default_factory=dict)  # revision -> replicas
    delete_revisions: list[str] = field(default_factory=list)
    status: dict[str, Any] | None = None  # merge patch for .status; None = unchanged
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    plan: Any = None  # a TrafficPlan to write; None = unchanged

    @property
    def writes(self) -> int:
        return len(self.create) + len(self.scale) + len(self.delete_revisions) + (self.status is not None) + (self.plan is not None)


def desired_objects(
    stack: dict[str, Any], spec: InferenceStackSpec, revision: Revision, config: OperatorConfig, number: int
) -> list[dict[str, Any]]:
    """The revision's objects in creation order; the ControllerRevision last."""
    meta = stack["metadata"]
    cache_ns = cache_namespace(meta["namespace"], meta["name"], revision.hash, spec.cache.namespace)
    out = [objects.build_bundle(stack, revision, cache_ns)]
    if spec.model.endpoint is None:
        out.append(objects.build_service(stack, revision.hash, config))
        out.append(objects.build_deployment(stack, spec, revision, config, spec.model.replicas))
    out.append(objects.build_controller_revision(stack, revision, number))
    return out


def revisions_to_collect(observed: Observed, keep: set[str], limit: int) -> list[str]:
    """Old revisions beyond revisionHistoryLimit, oldest first; never one in ``keep``."""
    others = sorted((n, h) for h, n in observed.revisions.items() if h not in keep)
    excess = len(others) - limit
    return [h for _, h in others[: max(0, excess)]]


def revision_ready(spec: InferenceStackSpec, observed: Observed, rev: str) -> bool:
    if rev not in observed.revisions:
        return False
    if spec.model.endpoint is not None:
        return True  # a hosted model has no pods to wait for
    dep = observed.deployments.get(rev)
    return dep is not None and (dep.available or spec.model.replicas == 0)


def status_patch(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any] | None:
    """Only the keys that differ, so an unchanged status costs no write."""
    patch = {k: v for k, v in wanted.items() if current.get(k) != v}
    return patch or None


def reconcile(
    stack: dict[str, Any],
    spec: InferenceStackSpec,
    revision: Revision,
    observed: Observed,
    config: OperatorConfig,
    now: datetime,
) -> Actions:
    """Revisions and first-deploy status. Rollouts between revisions are the rollout engine's."""
    meta = stack["metadata"]
    status = stack.get("status") or {}
    actions = Actions()
    rev = revision.hash
    stable = status.get("stableRevision")
    candidate = None if rev == stable else rev

    if rev not in observed.revisions:
        number = max(observed.revisions.values(), default=0) + 1
        actions.create = desired_objects(stack, spec, revision, config, number)
        actions.events.append(("Normal", "RevisionCreated", f"revision {rev} (#{number}) created"))

    # Scaling is not a new revision: live revisions follow spec.model.replicas.
    for live in filter(None, (stable, candidate)):
        dep = observed.deployments.get(live)
        if dep is not None and dep.replicas != spec.model.replicas and spec.model.endpoint is None:
            actions.scale[live] = spec.model.replicas

    keep = {r for r in (stable, candidate, status.get("candidateRevision")) if r}
    actions.delete_revisions = revisions_to_collect(observed, keep, spec.rollout.revision_history_limit)

    now_s = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    wanted: dict[str, Any] = {"observedGeneration": meta.get("generation")}
    ready_now = revision_ready(spec, observed, rev)
    dep = observed.deployments.get(rev)
    stalled = bool(dep and dep.deadline_exceeded and not ready_now)

    if stable is None:
        if ready_now:
            stable = rev
            actions.events.append(("Normal", "RevisionStable", f"revision {rev} is available and serves 100%"))
        wanted.update(
            stableRevision=stable,
            candidateRevision=None,
            phase=Phase.HEALTHY.value if stable else (Phase.FAILED.value if stalled else Phase.PENDING.value),
            message=(
                f"revision {rev} serves 100%"
                if stable
                else f"revision {rev}: GPU pods missed the progress deadline"
                if stalled
                else f"waiting for revision {rev} to become available"
            ),
        )
    elif candidate is None:
        wanted.update(candidateRevision=None, phase=Phase.HEALTHY.value, message=f"revision {stable} serves 100%")
    else:
        wanted.update(candidateRevision=candidate, phase=Phase.PROGRESSING.value, message=f"candidate {candidate} created")

    cache_prefix = spec.cache.namespace
    serving = wanted.get("stableRevision", stable)
    if serving:
        wanted["cacheNamespace"] = cache_namespace(meta["namespace"], meta["name"], serving, cache_prefix)

    healthy = wanted.get("phase") == Phase.HEALTHY.value
    conditions = {
        READY: ConditionState(healthy, "Serving" if healthy else "Progressing" if not stalled else "Stalled", wanted["message"]),
        RECONCILING: ConditionState(not healthy and not stalled, "Healthy" if healthy else "Deploying", wanted["message"]),
        STALLED: ConditionState(stalled, "ProgressDeadlineExceeded" if stalled else "NotStalled", wanted["message"] if stalled else ""),
    }
    merged = merge_conditions(status.get("conditions") or [], conditions, meta.get("generation"), now_s)
    # A condition list that equals the current one except timestamps must not be rewritten.
    if merged != (status.get("conditions") or []):
        wanted["conditions"] = merged
    actions.status = status_patch(status, wanted)
    return actions
