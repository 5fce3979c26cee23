"""The reconciler's pure core: from what is observed to what must be done.

``reconcile()`` takes the stack, its computed revision and a snapshot of the
objects the operator owns, and returns the actions that move the cluster
towards the desired state. It performs no I/O, so every decision here is
unit-tested without a cluster, and the handlers that call it stay thin.

Invariants this module maintains:

* one revision = Service, Deployment (none for a hosted model) and
  ControllerRevision; the ControllerRevision is created last and marks the
  revision complete, so an operator killed half-way re-creates the missing
  pieces and nothing twice;
* the stable and the candidate revision are never garbage-collected;
* when nothing changed, the returned actions are empty: no API writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from inferstack.api.v1alpha1 import InferenceStackSpec
from inferstack.core import objects
from inferstack.core.config import OperatorConfig
from inferstack.core.indexcheck import IndexVerdict
from inferstack.core.revision import Revision, cache_namespace
from inferstack.core.rollout import Analysis, Decision, Observations, RolloutState, decide, parse_command
from inferstack.core.status import Problem, desired_status, merge_patch, summarize


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
    plan_json: str | None = None  # spec (JSON) of the stack's own TrafficPlan
    # Revisions whose retriever searches a store: the pre-traffic check of their index version.
    index_verdicts: dict[str, IndexVerdict] = field(default_factory=dict)


@dataclass
class Actions:
    create: list[dict[str, Any]] = field(default_factory=list)  # create if missing, in order
    scale: dict[str, int] = field(default_factory=dict)  # revision -> replicas
    delete_revisions: list[str] = field(default_factory=list)
    status: dict[str, Any] | None = None  # merge patch for .status; None = unchanged
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)

    @property
    def writes(self) -> int:
        """Writes of the stack's objects and status; the traffic plan is the handler's (desired_plan)."""
        return len(self.create) + len(self.scale) + len(self.delete_revisions) + (self.status is not None)


def desired_objects(
    stack: dict[str, Any], spec: InferenceStackSpec, revision: Revision, config: OperatorConfig, number: int
) -> list[dict[str, Any]]:
    """The revision's objects in creation order; the ControllerRevision last."""
    out: list[dict[str, Any]] = []
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
    verdict = observed.index_verdicts.get(rev)
    if verdict is not None and not verdict.ready:
        return False  # its index version would serve no or the wrong documents: no traffic
    if spec.model.endpoint is not None:
        return True  # a hosted model has no pods to wait for
    dep = observed.deployments.get(rev)
    return dep is not None and (dep.available or spec.model.replicas == 0)


def live_revisions(decision: Decision, now: datetime) -> set[str]:
    """Revisions that must keep their replicas: stable, candidate and the ones kept warm."""
    st = decision.state
    warm = {r for r, until in st.scale_down_at.items() if until > now}
    return {r for r in (st.stable, st.candidate) if r} | warm


def status_patch(
    stack: dict[str, Any],
    spec: InferenceStackSpec | None,
    state: RolloutState,
    *,
    revision: str | None,
    observed: Observed,
    now: datetime,
    problem: Problem | None = None,
) -> dict[str, Any] | None:
    """The merge patch from the stack's status to what ``state`` (and ``problem``) say; None if equal.

    The only way the operator writes a stack's status: every field comes
    from ``state`` through ``status.summarize``, never patched afterwards.
    """
    meta, current = stack["metadata"], stack.get("status") or {}
    first = observed.deployments.get(revision) if revision else None
    waiting = state.candidate or (revision if state.stable is None else None)
    verdict = observed.index_verdicts.get(waiting) if waiting else None
    summary = summarize(
        spec, state, revision=revision, now=now, stuck=first is not None and first.deadline_exceeded, problem=problem,
        index=verdict if verdict is not None and not verdict.ready else None,
    )
    if spec is None:
        cache_ns = current.get("cacheNamespace")  # unknown without a spec: leave it as it is
    else:
        cache_ns = cache_namespace(meta["namespace"], meta["name"], state.stable, spec.cache.namespace) if state.stable else None
    wanted = desired_status(current, state, summary, generation=meta.get("generation"), cache_namespace=cache_ns, now=now)
    return merge_patch(current, wanted) or None


def reconcile(
    stack: dict[str, Any],
    spec: InferenceStackSpec,
    revision: Revision,
    observed: Observed,
    config: OperatorConfig,
    now: datetime,
    analysis: Analysis | None = None,
) -> tuple[Actions, Decision]:
    """Objects for the spec's revision, then the rollout engine's decision, as actions.

    ``actions.status`` assumes the actions succeed; when one is refused the
    handler asks ``status_patch`` again with the ``Problem``.
    """
    meta = stack["metadata"]
    status = stack.get("status") or {}
    actions = Actions()
    rev = revision.hash

    if rev not in observed.revisions:
        number = max(observed.revisions.values(), default=0) + 1
        actions.create = desired_objects(stack, spec, revision, config, number)
        actions.events.append(("Normal", "RevisionCreated", f"revision {rev} (#{number}) created"))

    known = set(observed.revisions)
    ready = frozenset(r for r in known if revision_ready(spec, observed, r))
    obs = Observations(
        revision=rev,
        ready=ready,
        not_ready={r: v.message for r, v in observed.index_verdicts.items() if not v.ready},
        known=frozenset(known),
        analysis=analysis,
        command=parse_command(meta.get("annotations")),
    )
    decision = decide(spec, RolloutState.from_status(status), obs, now, config.min_analysis_window)
    actions.events.extend((e.type, e.reason, e.message) for e in decision.events)

    # Scaling is not a new revision: live revisions follow spec.model.replicas,
    # the others keep their objects (restorable) at zero replicas.
    live = live_revisions(decision, now) | {rev}
    if spec.model.endpoint is None:
        for r, dep in observed.deployments.items():
            want = spec.model.replicas if r in live else 0
            if dep.replicas != want:
                actions.scale[r] = want

    keep = live | {r for r in (decision.state.rolled_back,) if r}
    actions.delete_revisions = revisions_to_collect(observed, keep, spec.rollout.revision_history_limit)
    actions.status = status_patch(stack, spec, decision.state, revision=rev, observed=observed, now=now)
    return actions, decision
