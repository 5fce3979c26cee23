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
* an embedding model the operator runs (core/embedder.py) is created before
  the first revision that uses it, shared by every revision that uses it,
  scaled like their Deployments and deleted with the last of them;
* the stable and the candidate revision are never garbage-collected;
* when nothing changed, the returned actions are empty: no API writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from inferstack.api.v1alpha1 import InferenceStackSpec
from inferstack.core import objects
from inferstack.core.config import OperatorConfig
from inferstack.core.embedder import (
    Embedder,
    build_embedder_deployment,
    build_embedder_service,
    embedder_name,
    embedder_of,
)
from inferstack.core.indexcheck import IndexVerdict
from inferstack.core.revision import Revision, cache_namespace
from inferstack.core.rollout import Analysis, Decision, Observations, RolloutState, decide, parse_command
from inferstack.core.status import Problem, Wait, desired_status, merge_patch, summarize

EMBEDDER_NOT_READY = "EmbedderNotReady"


@dataclass(frozen=True)
class DeploymentState:
    replicas: int
    available: bool  # Available=True and every replica updated and ready
    deadline_exceeded: bool = False  # Progressing=False, ProgressDeadlineExceeded


@dataclass(frozen=True)
class Observed:
    """What the operator's watches saw of the objects it owns for one stack."""

    deployments: dict[str, DeploymentState] = field(default_factory=dict)  # revision -> its model Deployment
    revisions: dict[str, int] = field(default_factory=dict)  # hash -> ControllerRevision.revision
    plan_json: str | None = None  # spec (JSON) of the stack's own TrafficPlan
    # Revisions whose retriever searches a store: the pre-traffic check of their index version.
    index_verdicts: dict[str, IndexVerdict] = field(default_factory=dict)
    # Each revision's parts as its ControllerRevision holds them: which embedder it uses.
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    embedders: dict[str, DeploymentState] = field(default_factory=dict)  # embedder key -> its Deployment


@dataclass
class Actions:
    create: list[dict[str, Any]] = field(default_factory=list)  # create if missing, in order
    scale: dict[str, int] = field(default_factory=dict)  # revision -> replicas
    delete_revisions: list[str] = field(default_factory=list)
    status: dict[str, Any] | None = None  # merge patch for .status; None = unchanged
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    scale_embedders: dict[str, int] = field(default_factory=dict)  # embedder key -> replicas
    delete_embedders: list[str] = field(default_factory=list)  # embedder keys, after delete_revisions

    @property
    def writes(self) -> int:
        """Writes of the stack's objects and status; the traffic plan is the handler's (desired_plan)."""
        return (
            len(self.create) + len(self.scale) + len(self.delete_revisions) + len(self.scale_embedders)
            + len(self.delete_embedders) + (self.status is not None)
        )


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


def embedders_of(observed: Observed) -> dict[str, Embedder]:
    """Revision -> the embedder the operator runs for it, for every revision whose parts are known."""
    return {r: e for r, p in observed.parts.items() if (e := embedder_of(p)) is not None}


def embedder_ready(observed: Observed, rev: str) -> bool:
    """The embedding model the operator runs for ``rev`` is Ready (or it runs none for it)."""
    embedder = embedder_of(observed.parts.get(rev))
    if embedder is None:
        return True
    dep = observed.embedders.get(embedder.key)
    return dep is not None and dep.available


def embedder_wait(stack_name: str, observed: Observed, rev: str) -> str | None:
    """Why ``rev``'s embedding model keeps it from traffic; None when it does not."""
    embedder = embedder_of(observed.parts.get(rev))
    if embedder is None or embedder_ready(observed, rev):
        return None
    return f"embedding model {embedder.display} (Deployment {embedder_name(stack_name, embedder.key)}) is not Ready yet"


def deadline_exceeded(observed: Observed, rev: str) -> bool:
    """The pods of ``rev`` (its model's, or its embedder's) missed the progress deadline."""
    dep = observed.deployments.get(rev)
    embedder = embedder_of(observed.parts.get(rev))
    emb = observed.embedders.get(embedder.key) if embedder is not None else None
    return any(d is not None and d.deadline_exceeded for d in (dep, emb))


def revision_ready(spec: InferenceStackSpec, observed: Observed, rev: str) -> bool:
    if rev not in observed.revisions:
        return False
    verdict = observed.index_verdicts.get(rev)
    if verdict is not None and not verdict.ready:
        return False  # its index version would serve no or the wrong documents: no traffic
    if not embedder_ready(observed, rev):
        return False  # its queries could not be embedded: every request would fail, or answer without context
    if spec.model.endpoint is not None:
        return True  # a hosted model has no pods to wait for
    dep = observed.deployments.get(rev)
    return dep is not None and (dep.available or spec.model.replicas == 0)


def live_revisions(decision: Decision, now: datetime) -> set[str]:
    """Revisions that must keep their replicas: stable, candidate and the ones kept warm."""
    st = decision.state
    warm = {r for r, until in st.scale_down_at.items() if until > now}
    return {r for r in (st.stable, st.candidate) if r} | warm


def waiting_for(stack_name: str, observed: Observed, rev: str) -> Wait | None:
    """What ``rev`` waits for besides its pods: its index version first (only a person can fix it), then its embedder."""
    verdict = observed.index_verdicts.get(rev)
    if verdict is not None and not verdict.ready:
        return Wait(verdict.reason, verdict.message)
    if (why := embedder_wait(stack_name, observed, rev)) is not None:
        return Wait(EMBEDDER_NOT_READY, why)
    return None


def embedder_actions(
    stack: dict[str, Any], spec: InferenceStackSpec, observed: Observed, config: OperatorConfig, *, staying: set[str], live: set[str]
) -> tuple[list[dict[str, Any]], dict[str, int], list[str]]:
    """Embedders to create (Service, Deployment), scale and delete, for the revisions that stay.

    Each staying revision's embedder exists; it runs the spec's
    ``embedding.replicas`` while a live revision uses it and none otherwise,
    like the model Deployments, so an undo finds it; it is deleted with the
    last revision that uses it.
    """
    uses = embedders_of(observed)
    wanted = {uses[r].key: uses[r] for r in sorted(staying) if r in uses}
    live_keys = {uses[r].key for r in live if r in uses}
    # Replicas are delivery, from the spec in force; a spec that runs no embedder any more keeps the default.
    replicas = spec.retriever.embedding.replicas if spec.retriever is not None else 1
    create: list[dict[str, Any]] = []
    scale: dict[str, int] = {}
    for key, embedder in sorted(wanted.items()):
        want = replicas if key in live_keys else 0
        dep = observed.embedders.get(key)
        if dep is None:
            # The Service first: the Deployment is what the watch sees, so it marks the embedder complete.
            create += [
                build_embedder_service(stack, embedder, config),
                build_embedder_deployment(stack, spec, embedder, config, want),
            ]
        elif dep.replicas != want:
            scale[key] = want
    return create, scale, sorted(k for k in observed.embedders if k not in wanted)


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
    waiting = state.candidate or (revision if state.stable is None else None)
    summary = summarize(
        spec, state, revision=revision, now=now, stuck=revision is not None and deadline_exceeded(observed, revision),
        problem=problem, waiting=waiting_for(meta["name"], observed, waiting) if waiting else None,
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
    observed = replace(observed, parts={**observed.parts, rev: revision.parts})

    if rev not in observed.revisions:
        number = max(observed.revisions.values(), default=0) + 1
        actions.create = desired_objects(stack, spec, revision, config, number)
        actions.events.append(("Normal", "RevisionCreated", f"revision {rev} (#{number}) created"))

    known = set(observed.revisions)
    ready = frozenset(r for r in known if revision_ready(spec, observed, r))
    waits = {r: w for r in known if (w := waiting_for(meta["name"], observed, r)) is not None}
    obs = Observations(
        revision=rev,
        ready=ready,
        not_ready={r: w.message for r, w in waits.items()},
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
    staying = (known | {rev}) - set(actions.delete_revisions)
    create, actions.scale_embedders, actions.delete_embedders = embedder_actions(
        stack, spec, observed, config, staying=staying, live=live
    )
    # Before the revision's own objects: its ControllerRevision, created last, marks it complete.
    actions.create = create + actions.create
    actions.status = status_patch(stack, spec, decision.state, revision=rev, observed=observed, now=now)
    return actions, decision
