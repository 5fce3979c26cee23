"""kopf wiring: watches feed in-memory indexes; one reconcile loop per stack.

Design:

* Owned Deployments, ControllerRevisions and traffic plans (TrafficPlans, and
  the plan ConfigMaps of older releases, to delete them) are indexed from
  kopf's watch streams, so a reconcile pass reads memory, not the API server.
* Each stack has one loop (``StackLoop``) that runs ``reconcile_once``
  serially (no two passes for one stack ever race). It wakes on any event of the stack or of
  an object it owns, and every ``resyncSeconds`` to move rollout timers.
* The decision is made by the pure core; this module only gathers inputs,
  calls the core and applies the returned actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import json
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from inferstack import GROUP, PLURAL, VERSION
from inferstack.api.v1alpha1 import InferenceStackSpec, TrafficProvider
from inferstack.controller import metrics
from inferstack.controller.golden import JobSeen, golden_analysis
from inferstack.controller.indexes import IndexChecker
from inferstack.controller.kube import FIELD_MANAGER, Kube, api_problem
from inferstack.controller.leader import Elector
from inferstack.controller.notify import Notifier
from inferstack.controller.prometheus import PrometheusClient, analyse
from inferstack.core import golden, objects
from inferstack.core.config import OperatorConfig
from inferstack.core.embedder import LABEL_EMBEDDER, embedder_name
from inferstack.core.gateway import build_httproute
from inferstack.core.notifications import notifications, targets
from inferstack.core.promql import query_errors
from inferstack.core.reconcile import (
    Actions,
    DeploymentState,
    Observed,
    deadline_exceeded,
    reconcile,
    status_patch,
)
from inferstack.core.revision import ResolvedRefs, UnresolvedReference, compute_revision
from inferstack.core.rollout import Analysis, Decision, RolloutState, analysis_window
from inferstack.core.status import INVALID_SPEC, Problem, one_line
from inferstack.core.trafficplan import (
    PLAN_KEY,
    PLAN_LABEL,
    PLAN_PLURAL,
    build_traffic_plan,
    controller_uid,
    parse_current,
    plan_differs,
    plan_name,
    traffic_plan,
)

log = logging.getLogger(__name__)

OWNED = {objects.LABEL_MANAGED_BY: objects.MANAGER}
BACKOFF_MIN, BACKOFF_MAX = 1.0, 60.0  # seconds between passes that failed
MAX_EMITTED = 256  # distinct events remembered per stack for de-duplication


class Runtime:
    """Process-wide state set at startup: the API client and the configuration."""

    kube: Kube
    config: OperatorConfig = OperatorConfig()
    prometheus: PrometheusClient | None = None
    loops: dict[tuple[str, str], StackLoop] = {}
    notifier: Notifier | None = None
    # Every live stack as the watch last saw it, and kopf's indexes: a standby
    # keeps them too, so on taking the lease it starts every loop at once.
    stacks: dict[tuple[str, str], dict[str, Any]] = {}
    indexes: tuple = ()
    # With leader election, only the leader runs loops and writes; None: always.
    elector: Elector | None = None
    index_checker: IndexChecker = IndexChecker()
    # kopf's process-wide variables as its handlers see them (loop_context). kopf sets the
    # queue kopf.event posts to only while it handles an object, so a loop started outside a
    # handler (by the leader election, on taking the lease) takes them from here.
    handler_context: contextvars.Context | None = None


def leading() -> bool:
    return Runtime.elector is None or Runtime.elector.leading


def may_write() -> bool:
    return Runtime.elector is None or Runtime.elector.may_write()


def poke(namespace: str | None, stack: str | None) -> None:
    if namespace and stack and (loop := Runtime.loops.get((namespace, stack))):
        loop.wake.set()


# ------------------------------------------------------------------- indexes


def _deployment_state(spec: dict[str, Any], status: dict[str, Any]) -> DeploymentState:
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    replicas = spec.get("replicas", 1)
    available = (
        conditions.get("Available", {}).get("status") == "True"
        and status.get("updatedReplicas", 0) == replicas
        and status.get("availableReplicas", 0) >= replicas
        and status.get("observedGeneration", 0) >= 1
    )
    progressing = conditions.get("Progressing", {})
    deadline = progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded"
    return DeploymentState(replicas=replicas, available=available, deadline_exceeded=deadline)


@kopf.index("apps", "v1", "deployments", labels=OWNED)
def deployment_index(namespace, labels, spec, status, **_):
    """A revision's model Deployment (revision label) or an embedder's (embedder label, core/embedder.py)."""
    key = (namespace, labels.get(objects.LABEL_STACK))
    return {key: (labels.get(objects.LABEL_REVISION), labels.get(LABEL_EMBEDDER), _deployment_state(dict(spec), dict(status)))}


@kopf.index("apps", "v1", "controllerrevisions", labels=OWNED)
def revision_index(namespace, labels, body, **_):
    data = body.get("data") or {}
    # The revision's parts, compact: kept for as long as the revision exists.
    return {(namespace, labels.get(objects.LABEL_STACK)): (data.get("hash"), body.get("revision", 0), compact(data.get(objects.REVISION_DATA_KEY)))}


@dataclass(frozen=True)
class PlanSeen:
    """A plan object as the watch saw it: whose it is, and the serial the next write must exceed."""

    name: str
    uid: str
    owner_uid: str | None  # the controlling InferenceStack's UID
    serial: int
    spec_json: str | None = None  # TrafficPlans only
    resource_version: str = ""
    foreign: bool = False  # a field manager other than the operator wrote to it


def _serial(plan: dict[str, Any] | None) -> int:
    try:
        return int((plan or {}).get("serial") or 0)
    except (TypeError, ValueError):
        return 0


@kopf.index(GROUP, VERSION, PLAN_PLURAL)
def plan_index(namespace, name, body, spec, **_):
    meta = body["metadata"]
    foreign = any(m.get("manager") != FIELD_MANAGER for m in meta.get("managedFields") or [])
    seen = PlanSeen(name, meta.get("uid", ""), controller_uid(meta), _serial(spec), json.dumps(dict(spec)), meta.get("resourceVersion", ""), foreign)
    return {(namespace, spec.get("stack")): seen}


@kopf.index("", "v1", "configmaps", labels={PLAN_LABEL: "true", **OWNED})
def legacy_plan_index(namespace, name, labels, body, **_):
    """Plan ConfigMaps written by an older release: deleted once the stack's TrafficPlan exists."""
    meta = body["metadata"]
    current = parse_current((body.get("data") or {}).get(PLAN_KEY))
    return {(namespace, labels.get(objects.LABEL_STACK)): PlanSeen(name, meta.get("uid", ""), controller_uid(meta), current.serial if current else 0)}


@kopf.index("batch", "v1", "jobs", labels={**OWNED, objects.LABEL_COMPONENT: golden.COMPONENT})
def golden_job_index(namespace, name, labels, status, **_):
    return {(namespace, labels.get(objects.LABEL_STACK)): JobSeen(name, labels.get(objects.LABEL_REVISION), dict(status))}


@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
@kopf.on.event("apps", "v1", "controllerrevisions", labels=OWNED)
@kopf.on.event("batch", "v1", "jobs", labels={**OWNED, objects.LABEL_COMPONENT: golden.COMPONENT})
@kopf.on.event(GROUP, VERSION, PLAN_PLURAL, labels=OWNED)  # type: ignore[arg-type]
def owned_object_changed(namespace, labels, **_):
    poke(namespace, labels.get(objects.LABEL_STACK))


@dataclass(frozen=True)
class PlansSeen:
    """The stack's own TrafficPlan (None when it has none, or one another stack of that name owned),
    the serial a new plan must exceed, and the stack's plan ConfigMaps from an older release."""

    current_json: str | None
    floor_serial: int
    legacy: tuple[PlanSeen, ...]
    replace_version: str | None = None  # resourceVersion of a plan object someone else wrote to: replace it whole


def plans_seen(key: tuple[str, str], uid: str, plan_index, legacy_plan_index) -> PlansSeen:
    name = plan_name(key[1])
    plans = [p for p in plan_index.get(key, []) if p.name == name]
    own = next((p for p in plans if p.owner_uid == uid), None)
    # Ours only if it carries this stack's UID: a plan left by a deleted stack of
    # the same name is rewritten (and re-owned) at once, its serial carried on.
    legacy = tuple(p for p in legacy_plan_index.get(key, []) if p.name == name and p.owner_uid == uid)
    floor = max((p.serial for p in (*plans, *legacy)), default=0)
    touched = next((p.resource_version for p in plans if p.owner_uid != uid or p.foreign), None)
    return PlansSeen(own.spec_json if own else None, floor, legacy, touched)


def observe(key: tuple[str, str], deployment_index, revision_index, plans: PlansSeen) -> tuple[Observed, dict[str, dict]]:
    entries = list(deployment_index.get(key, []))
    deployments = {rev: st for rev, _, st in entries if rev}
    embedders = {emb: st for rev, emb, st in entries if emb and not rev}
    revisions: dict[str, int] = {}
    parts: dict[str, dict] = {}
    for rev, number, data in revision_index.get(key, []):
        if rev:
            revisions[rev] = int(number)
            parts[rev] = data or {}
    observed = Observed(deployments=deployments, revisions=revisions, plan_json=plans.current_json, parts=dict(parts), embedders=embedders)
    return observed, parts


# ----------------------------------------------------------------- reconcile


async def resolve_refs(kube: Kube, namespace: str, spec: InferenceStackSpec) -> ResolvedRefs:
    prompt_system = tools = None
    if ref := spec.prompt.config_map_ref:
        prompt_system = await kube.read_configmap_key(namespace, ref.name, ref.key)
        if prompt_system is None:
            raise UnresolvedReference(f"spec.prompt.configMapRef: ConfigMap {ref.name} has no key {ref.key}")
    if spec.tools and (ref := spec.tools.config_map_ref):
        raw = await kube.read_configmap_key(namespace, ref.name, ref.key)
        if raw is None:
            raise UnresolvedReference(f"spec.tools.configMapRef: ConfigMap {ref.name} has no key {ref.key}")
        try:
            tools = json.loads(raw)
        except json.JSONDecodeError as e:
            raise UnresolvedReference(f"spec.tools.configMapRef: {ref.name}/{ref.key} is not JSON: {e}") from e
    return ResolvedRefs(prompt_system=prompt_system, tools_definitions=tools)


def post_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """A Kubernetes Event on the stack, through kopf's background poster (never blocks a pass)."""
    if not may_write():
        return  # a replica that lost the lease posts nothing, like it writes nothing
    metrics.API_WRITES.labels(body.get("metadata", {}).get("namespace", ""), "Event", "create").inc()
    kopf.event(cast(kopf.Body, body), type=type_, reason=reason, message=message)


class InvalidSpec(ValueError):
    """A spec the API server accepted but the operator cannot use; only the user can fix it."""


async def read_spec(kube: Kube, body: dict[str, Any]) -> tuple[InferenceStackSpec, ResolvedRefs]:
    """The spec, its references resolved and its queries parsed; raises InvalidSpec or ApiException."""
    try:
        spec = InferenceStackSpec.model_validate(body.get("spec") or {})
    except ValidationError as e:
        err = e.errors()[0]
        raise InvalidSpec(f"spec.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from e
    try:
        refs = await resolve_refs(kube, body["metadata"]["namespace"], spec)
    except UnresolvedReference as e:
        raise InvalidSpec(str(e)) from e
    if errors := query_errors(spec.gates):
        raise InvalidSpec(errors[0] + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
    return spec, refs


# How long a loop remembers an object it created, while the watch has not shown it yet.
CREATED_MEMORY_SECONDS = 30.0


async def apply_objects(kube: Kube, body: dict[str, Any], actions: Actions, created: dict[str, float] | None = None) -> Problem | None:
    """Creates, scales and deletions, in order; the first refusal stops them and is returned.

    A refused call is the stack's problem to show (its status and a Warning
    event), not the operator's to crash on; the next pass retries with backoff.

    ``created`` (the stack loop's own, "Kind/name" -> until when): objects this
    loop created are not created again until the watch shows them or
    CREATED_MEMORY_SECONDS pass. A pass woken by the status write's own event
    often runs before the watch brings the new Deployment, sees no revision
    objects and would create them again: at 1,000 stacks, 2 % of stacks
    (6 % at 400) sent each create twice, answered 409.
    """
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    step = ""
    now = time.monotonic()
    if created is not None and not actions.create:
        created.clear()  # the watch shows every object: nothing left to remember
    try:
        for manifest in actions.create:
            what = f"{manifest['kind']}/{manifest['metadata']['name']}"
            if created is not None and created.get(what, 0.0) > now:
                continue
            step = f"creating {manifest['kind']} {manifest['metadata']['name']}"
            await kube.create(manifest)
            if created is not None:
                created[what] = now + CREATED_MEMORY_SECONDS
        for rev, replicas in actions.scale.items():
            step = f"scaling revision {rev} to {replicas}"
            await kube.scale(ns, objects.revision_name(name, rev), replicas)
        for key, replicas in actions.scale_embedders.items():
            step = f"scaling embedder {key} to {replicas}"
            await kube.scale(ns, embedder_name(name, key), replicas)
        for rev in actions.delete_revisions:
            step = f"removing revision {rev}"
            await kube.delete_revision(ns, name, rev)
            post_event(body, "Normal", "RevisionCollected", f"revision {rev} removed (beyond revisionHistoryLimit)")
        for key in actions.delete_embedders:
            step = f"removing embedder {key}"
            await kube.delete_embedder(ns, embedder_name(name, key))
            post_event(body, "Normal", "EmbedderCollected", f"embedding Deployment {embedder_name(name, key)} removed (no kept revision uses it)")
    except ApiException as e:
        return api_problem(e, step)
    return None


def post_events(body: dict[str, Any], events: list[tuple[str, str, str]], emitted: set[str]) -> None:
    for etype, reason, message in events:
        # The same decision seen twice before the watch catches up posts once.
        if (key := f"{reason}:{message}") not in emitted:
            if len(emitted) >= MAX_EMITTED:
                emitted.clear()  # bounded memory per stack; at worst one event is posted twice
            emitted.add(key)
            post_event(body, etype, reason, message)


async def run_analysis(spec: InferenceStackSpec, meta: dict[str, Any], status: dict[str, Any], now: datetime) -> Analysis | None:
    state = RolloutState.from_status(status)
    window = analysis_window(spec, state, now, Runtime.config.min_analysis_window)
    if window is None or not state.stable or not state.candidate:
        return None
    if Runtime.prometheus is None:
        Runtime.prometheus = PrometheusClient(Runtime.config.prometheus_url, timeout=Runtime.config.prometheus_timeout_seconds)
    # Every query is evaluated at ``now`` over ``window``: the analysis covers
    # exactly [now - window, now], which analysis_window keeps inside the step.
    step_kind = spec.rollout.steps[state.step_index].kind if state.step_index is not None else None
    verdicts = await analyse(
        spec, meta["name"], meta["namespace"], state.stable, state.candidate, Runtime.prometheus,
        window=window, at=now, step_kind=step_kind,
    )  # fmt: skip
    return Analysis(state.candidate, now, tuple(verdicts), window_start=now - window)


def desired_plan(meta, spec, decision: Decision, parts: dict[str, dict], current_json: str | None, floor_serial: int = 0):
    """The traffic plan the decision asks for, or None when the current one already says it.

    Its serial exceeds every plan of the stack seen (``floor_serial``: an older
    release's ConfigMap, a plan a deleted stack of that name left), so serials
    only grow, across upgrades too.
    """
    t = decision.traffic
    if not t.stable or t.stable not in parts:
        return None
    candidate = (t.candidate, parts[t.candidate]) if t.candidate and t.candidate in parts else None
    current = parse_current(current_json)
    plan = traffic_plan(
        meta, spec, Runtime.config, (t.stable, parts[t.stable]), candidate,
        candidate_weight=t.candidate_weight, shadow_percent=t.shadow_percent,
        serial=max(current.serial if current else 0, floor_serial) + 1,
    )  # fmt: skip
    return plan if plan_differs(current, plan) else None


@dataclass
class PassResult:
    requeue: timedelta | None = None  # when the rollout wants to be looked at again
    patched: dict[str, Any] | None = None  # the stack as the status patch left it
    problem: Problem | None = None  # what stopped this pass; the loop backs off


async def reconcile_once(body: dict[str, Any], indexes: tuple, emitted: set[str], created: dict[str, float] | None = None) -> PassResult:
    """One level-based pass: read, decide (pure core), write what changed.

    Writes, in order: the revision's objects; the status (the rollout's
    memory, and the one place a problem is shown); the traffic plan. The
    status goes before the traffic: killed in between, the next pass finds
    the plan behind the status and writes it forward, while the other order
    would decide the old step again and move traffic back.
    """
    kube = Runtime.kube
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    now = datetime.now(UTC)
    plans = plans_seen(key, meta.get("uid", ""), indexes[2], indexes[4] if len(indexes) > 4 else {})
    observed, parts = observe(key, indexes[0], indexes[1], plans)
    try:
        spec, refs = await read_spec(kube, body)
    except (InvalidSpec, ApiException) as e:
        unusable = api_problem(e, "reading the spec's ConfigMaps") if isinstance(e, ApiException) else Problem(INVALID_SPEC, str(e))
        state = RolloutState.from_status(body.get("status"))
        patch = status_patch(body, None, state, revision=None, observed=observed, now=now, problem=unusable)
        return PassResult(patched=await write_status(kube, body, patch, unusable), problem=unusable)
    revision = compute_revision(spec, refs)
    parts.setdefault(revision.hash, revision.parts)
    observed = replace(observed, parts=dict(parts))  # the spec's revision too, before its ControllerRevision exists
    # Revisions waiting for traffic get none until their index version is checked (core/indexcheck.py).
    status = body.get("status") or {}
    waiting = {revision.hash, status.get("candidateRevision")} - {status.get("stableRevision"), None}
    verdicts = await Runtime.index_checker.verdicts(kube, meta["namespace"], meta["name"], parts, sorted(w for w in waiting if w))
    if verdicts:
        observed = replace(observed, index_verdicts=verdicts)
    analysis = await run_analysis(spec, meta, body.get("status") or {}, now)
    if analysis is None:
        # An evaluate step is judged by its golden-set Jobs, not by Prometheus.
        jobs = list(indexes[3].get(key, [])) if len(indexes) > 3 else []
        try:
            analysis = await golden_analysis(kube, body, spec, parts, jobs, Runtime.config, now)
        except ApiException as e:
            unusable = api_problem(e, "running the golden-set Jobs")
            state = RolloutState.from_status(body.get("status"))
            patch = status_patch(body, spec, state, revision=revision.hash, observed=observed, now=now, problem=unusable)
            return PassResult(patched=await write_status(kube, body, patch, unusable), problem=unusable)
    actions, decision = reconcile(body, spec, revision, observed, Runtime.config, now, analysis)
    problem = await apply_objects(kube, body, actions, created)
    if problem is not None:
        # The same decision, shown with what stopped it.
        actions.status = status_patch(body, spec, decision.state, revision=revision.hash, observed=observed, now=now, problem=problem)
    try:
        patched = await write_status(kube, body, actions.status, problem)
    except ApiException as e:
        # Nowhere to show it on the stack (its status is what was refused): one log line, backoff.
        return PassResult(problem=api_problem(e, "writing the status"))
    notify(body, spec, decision, observed, revision.hash, actions.status, now)
    step = "writing the traffic plan"
    try:
        written = False
        if (plan := desired_plan(meta, spec, decision, parts, observed.plan_json, plans.floor_serial)) is not None:
            if plans.replace_version:
                await kube.replace_plan(build_traffic_plan(body, plan), plans.replace_version)
            else:
                await kube.write_plan(build_traffic_plan(body, plan))
            written = True
        if plans.legacy and (written or observed.plan_json is not None):
            # Only once the TrafficPlan exists, so a router never finds no plan.
            step = "deleting the plan ConfigMap of an older release"
            for legacy in plans.legacy:
                await kube.delete_legacy_plan(meta["namespace"], legacy.name, legacy.uid)
        if spec.traffic.provider == TrafficProvider.GATEWAY_API and decision.traffic.stable:
            # After the status, like the plan; a no-op when the route already says it.
            step = "applying the HTTPRoute"
            await kube.apply_httproute(build_httproute(body, spec, decision.traffic, Runtime.config))
    except ApiException as e:
        # The status is written; the next pass finds the traffic behind it and writes it forward.
        return PassResult(decision.requeue_after, patched, api_problem(e, step))
    post_events(body, actions.events, emitted)
    metrics.CANDIDATE_WEIGHT.labels(*key).set(decision.traffic.candidate_weight)
    metrics.export_verdicts(*key, decision.state.candidate or decision.state.rolled_back, decision.state.verdicts)
    if actions.status is not None:  # counted once: the pass that recorded it
        if decision.rollback is not None:
            metrics.ROLLBACKS.labels(*key, decision.rollback.cause).inc()
        if decision.promoted is not None:
            metrics.PROMOTIONS.labels(*key).inc()
    return PassResult(decision.requeue_after, patched, problem)


def notify(body, spec, decision: Decision, observed: Observed, revision: str, recorded: dict[str, Any] | None, now: datetime) -> None:
    """Queue the notifications of a decision this pass's status write recorded (never waits).

    Only the pass that recorded it: a later pass decides from that status, in
    which the promotion or rollback already happened (core/notifications.py).
    """
    if recorded is None or Runtime.notifier is None:
        return
    meta = body["metadata"]
    stuck = decision.state.stable is None and deadline_exceeded(observed, revision) and recorded.get("phase") == "Failed"
    before = RolloutState.from_status(body.get("status"))
    found = notifications(meta["namespace"], meta["name"], spec, before, decision, now, first_revision_stuck=revision if stuck else None)
    for n in found:
        Runtime.notifier.submit(n, targets(n.namespace, n.kind, spec.notifications.webhooks, Runtime.config.notifications.webhooks))


async def write_status(kube: Kube, body: dict[str, Any], patch: dict[str, Any] | None, problem: Problem | None) -> dict[str, Any] | None:
    """Patch the status (when anything changed); a new problem also gets one Warning event.

    The event is posted when the status changes to show the problem, so a
    failure retried every few seconds posts one event, not one per retry.
    """
    if patch is None:
        return None
    meta = body["metadata"]
    log.debug("status patch %s/%s: %s", meta["namespace"], meta["name"], patch)
    patched = await kube.patch_status(meta["namespace"], meta["name"], patch)
    if problem is not None and ("message" in patch or "phase" in patch):
        post_event(body, "Warning", problem.reason, problem.message)
    return patched


# kopf's context variables of the one event a handler is called for: its cause
# holds the object's whole body as the watch sent it (managedFields included),
# with kopf's patch and loggers for it. A task keeps a copy of the context it
# was created in, so a loop started by stack_changed would keep the stack's
# first event for as long as the stack lives (tests/unit/test_stack_memory.py).
KOPF_PER_EVENT_VARS = frozenset(
    {"cause_var", "handler_var", "subregistry_var", "subexecuted_var", "sublifecycle_var", "subrefs_var", "subsettings_var"}
)


def loop_context() -> contextvars.Context:
    """The current context without kopf's per-event variables; the process-wide ones
    (its settings, the queue ``kopf.event`` posts to) stay."""
    ctx = contextvars.Context()
    for var, value in contextvars.copy_context().items():
        if var.name not in KOPF_PER_EVENT_VARS:
            ctx.run(var.set, value)
    return ctx


class StackLoop:
    """The one reconcile loop of one stack; passes never overlap.

    A plain task rather than a kopf daemon: kopf guards daemons with a
    finalizer, which would block deleting a stack (and its namespace, and a
    GitOps prune) whenever the operator is down. Owner references already
    clean up everything a stack owns, so no finalizer is needed.
    """

    def __init__(self, key: tuple[str, str], body: dict[str, Any], indexes: tuple,
                 context: contextvars.Context | None = None) -> None:
        self.key = key
        self.body = body
        self.indexes = indexes
        self.wake = asyncio.Event()
        self.emitted: set[str] = set()
        self.created: dict[str, float] = {}  # what apply_objects created and the watch has not shown yet
        metrics.track_stack(*key)
        self.task = asyncio.create_task(self.run(), name=f"reconcile {key[0]}/{key[1]}", context=context or loop_context())

    async def run(self) -> None:
        namespace, name = self.key
        backoff = BACKOFF_MIN
        logged: set[str] = set()  # failures already logged with a traceback
        while True:
            self.wake.clear()
            try:
                with metrics.RECONCILE_SECONDS.time():
                    result = await reconcile_once(self.body, self.indexes, self.emitted, self.created)
                if result.patched is not None and _rv(result.patched) > _rv(self.body):
                    # Decide next from what we wrote, not from a watch event
                    # that may still be on its way: a pass woken by another
                    # object's event must not redo this pass's step. When the
                    # watch brought that version first, it is held already (one
                    # copy, shared with Runtime.stacks; a second would double
                    # what a stack costs in memory).
                    self.body = slim(result.patched)
                timeout = Runtime.config.resync_seconds
                if result.requeue is not None:
                    # Wake up right when a step's timer ends, not up to a resync later.
                    timeout = max(0.05, min(timeout, result.requeue.total_seconds()))
                if result.problem is None:
                    backoff = BACKOFF_MIN
                else:
                    # Shown on the stack already; one line here, then retry with backoff.
                    metrics.RECONCILE_ERRORS.labels(namespace, name).inc()
                    log.warning("reconcile %s/%s: %s: %s (retry in %.0fs)", namespace, name, result.problem.reason, result.problem.message, backoff)
                    timeout, backoff = backoff, min(backoff * 2, BACKOFF_MAX)
                del result  # its patched body (managedFields and all) is not kept while the loop sleeps
            except asyncio.CancelledError:
                raise
            except Exception as e:  # one bad pass must not kill the loop
                metrics.RECONCILE_ERRORS.labels(namespace, name).inc()
                # Keyed by the kind of failure and its first line only: a message that
                # carries a request id would otherwise log a traceback at every retry.
                what = f"{type(e).__name__}: {one_line(str(e).partition(chr(10))[0], 120)}"
                if what in logged:
                    log.error("reconcile %s/%s failed again: %s (retry in %.0fs)", namespace, name, what, backoff)
                else:  # a traceback once per distinct failure, not once per retry
                    if len(logged) < MAX_EMITTED:
                        logged.add(what)
                    log.exception("reconcile %s/%s failed: %s", namespace, name, what)
                timeout, backoff = backoff, min(backoff * 2, BACKOFF_MAX)
            metrics.RECONCILES.labels(namespace, name).inc()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):  # unlike wait_for, no second task per stack
                    await self.wake.wait()

    def update(self, body: dict[str, Any]) -> None:
        """Take a newer version of the stack; ignore one older than what we hold."""
        if _rv(body) >= _rv(self.body):
            self.body = body

    def stop(self) -> None:
        self.task.cancel()


# Annotations the operator never reads, kept out of the stacks it holds: kubectl
# apply's copy of the whole object it applied is as large as the spec.
UNREAD_ANNOTATIONS = frozenset({"kubectl.kubernetes.io/last-applied-configuration"})
INTERN_MAX = 64  # strings up to this length are shared between the bodies kept (sys.intern)


def slim(body: Any) -> dict[str, Any]:
    """A compact copy of a stack's body to keep: without metadata.managedFields
    and the annotations in UNREAD_ANNOTATIONS, its keys and short strings shared.

    Every stack is held until it is deleted (Runtime.stacks, and its loop's
    body: the same object once the watch has caught up). The operator reads
    neither managedFields nor those annotations; they were about half of a
    stack's body in memory. Measured with tracemalloc on json.loads of the 300
    stacks of a bench/stacks_scale.py run, without managedFields: 15.7 KiB of
    Python objects per stack as the watch sent it, 7.4 KiB as kept here.
    """
    body = dict(body)
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    if (annotations := meta.get("annotations")) and not UNREAD_ANNOTATIONS.isdisjoint(annotations):
        meta["annotations"] = {k: v for k, v in annotations.items() if k not in UNREAD_ANNOTATIONS}
    return cast(dict[str, Any], compact({**body, "metadata": meta}))


def compact(value: Any) -> Any:
    """A deep copy of JSON data whose dict keys and short strings are shared with
    every other copy (``sys.intern``): a thousand stacks hold one ``"revisionHistoryLimit"``."""
    if isinstance(value, Mapping):
        return {sys.intern(str(k)): compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [compact(v) for v in value]
    if isinstance(value, str) and len(value) <= INTERN_MAX:
        return sys.intern(value)
    return copy.deepcopy(value)


def _rv(body: dict[str, Any]) -> int:
    # resourceVersion is opaque by contract, but for one object served by one
    # etcd it grows monotonically; 0 makes an unparsable one always lose.
    try:
        return int(body["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return 0


@kopf.on.event(GROUP, VERSION, PLURAL)  # type: ignore[arg-type]
async def stack_changed(type, body, namespace, name, deployment_index, revision_index, plan_index, golden_job_index, legacy_plan_index, **_):
    key = (namespace, name)
    Runtime.indexes = (deployment_index, revision_index, plan_index, golden_job_index, legacy_plan_index)
    loop = Runtime.loops.get(key)
    if type == "DELETED" or body.get("metadata", {}).get("deletionTimestamp"):
        forget_stack(key)
        return
    snapshot = slim(body)
    Runtime.stacks[key] = snapshot
    if Runtime.handler_context is None:
        Runtime.handler_context = loop_context()
    if loop is None:
        if leading():  # a standby only remembers the stack
            Runtime.loops[key] = StackLoop(key, snapshot, Runtime.indexes)
    else:
        loop.update(snapshot)
        loop.wake.set()


def forget_stack(key: tuple[str, str]) -> None:
    """The stack is gone: its loop stops, and nothing of it is kept."""
    Runtime.stacks.pop(key, None)
    if (loop := Runtime.loops.pop(key, None)) is not None:
        loop.stop()
        metrics.forget_stack(*key)


def forget_namespace(namespace: str) -> None:
    """kopf stopped watching ``namespace``, which vanished (controller/kopf_fixes.py): its stacks'
    DELETED events may never come, so they are forgotten here."""
    for key in [k for k in {*Runtime.stacks, *Runtime.loops} if k[0] == namespace]:
        if key in Runtime.loops:
            log.info("stack %s/%s: its namespace is gone; its loop stops", *key)
        forget_stack(key)


def start_all_loops() -> None:
    """Leadership taken: one loop for every stack the watch has seen (the standby kept them).

    Called by the leader election, outside any kopf handler: the loops get kopf's variables
    as a handler saw them (without them, kopf.event raised LookupError at every pass of a
    standby that took over: seen in CI)."""
    for key, body in Runtime.stacks.items():
        if key not in Runtime.loops:
            context = Runtime.handler_context.copy() if Runtime.handler_context is not None else None
            Runtime.loops[key] = StackLoop(key, body, Runtime.indexes, context)


async def stop_all_loops() -> None:
    """Leadership lost, or shutdown: cancel every loop and wait until none runs."""
    loops = list(Runtime.loops.values())
    Runtime.loops.clear()
    for loop in loops:
        loop.stop()
    await asyncio.gather(*(loop.task for loop in loops), return_exceptions=True)
    for loop in loops:
        metrics.forget_stack(*loop.key)  # a standby exports no verdicts of rollouts it does not run


@kopf.on.cleanup()
async def stop_loops(**_):
    await stop_all_loops()
    if Runtime.notifier is not None:
        await Runtime.notifier.close()
