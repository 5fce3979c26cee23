"""kopf wiring: watches feed in-memory indexes; one reconcile loop per stack.

Design:

* Owned Deployments, ControllerRevisions and traffic plans are indexed from
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
import copy
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import kopf
from pydantic import ValidationError

from inferstack import GROUP, PLURAL, VERSION
from inferstack.api.v1alpha1 import InferenceStackSpec, TrafficProvider
from inferstack.controller import metrics
from inferstack.controller.kube import Kube
from inferstack.controller.prometheus import PrometheusClient, analyse
from inferstack.core import objects
from inferstack.core.config import OperatorConfig
from inferstack.core.gateway import build_httproute
from inferstack.core.plan import parse_current, plan_differs, traffic_plan
from inferstack.core.reconcile import Actions, DeploymentState, Observed, reconcile
from inferstack.core.revision import ResolvedRefs, UnresolvedReference, compute_revision
from inferstack.core.rollout import Analysis, Decision, RolloutState, analysis_due
from inferstack.core.status import merge_conditions, stalled
from inferstack.core.traffic import PLAN_KEY, PLAN_LABEL

log = logging.getLogger(__name__)

OWNED = {objects.LABEL_MANAGED_BY: objects.MANAGER}


class Runtime:
    """Process-wide state set at startup: the API client and the configuration."""

    kube: Kube
    config: OperatorConfig = OperatorConfig()
    prometheus: PrometheusClient | None = None
    loops: dict[tuple[str, str], StackLoop] = {}


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
    key = (namespace, labels.get(objects.LABEL_STACK))
    return {key: (labels.get(objects.LABEL_REVISION), _deployment_state(dict(spec), dict(status)))}


@kopf.index("apps", "v1", "controllerrevisions", labels=OWNED)
def revision_index(namespace, labels, body, **_):
    data = body.get("data") or {}
    return {(namespace, labels.get(objects.LABEL_STACK)): (data.get("hash"), body.get("revision", 0), data.get(objects.REVISION_DATA_KEY))}


@kopf.index("", "v1", "configmaps", labels={PLAN_LABEL: "true"})
def plan_index(namespace, labels, body, **_):
    return {(namespace, labels.get(objects.LABEL_STACK)): (body.get("data") or {}).get(PLAN_KEY)}


@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
@kopf.on.event("apps", "v1", "controllerrevisions", labels=OWNED)
@kopf.on.event("", "v1", "configmaps", labels={PLAN_LABEL: "true"})
def owned_object_changed(namespace, labels, **_):
    poke(namespace, labels.get(objects.LABEL_STACK))


def observe(key: tuple[str, str], deployment_index, revision_index, plan_index) -> tuple[Observed, dict[str, dict]]:
    deployments = {rev: st for rev, st in deployment_index.get(key, []) if rev}
    revisions: dict[str, int] = {}
    parts: dict[str, dict] = {}
    for rev, number, data in revision_index.get(key, []):
        if rev:
            revisions[rev] = int(number)
            parts[rev] = data or {}
    plans = list(plan_index.get(key, []))
    return Observed(deployments=deployments, revisions=revisions, plan_json=plans[0] if plans else None), parts


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
    kopf.event(cast(kopf.Body, body), type=type_, reason=reason, message=message)


async def apply(kube: Kube, body: dict[str, Any], actions: Actions, emitted: set[str]) -> dict[str, Any] | None:
    """Carry out the actions; returns the stack as patched, when the status was written."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    for manifest in actions.create:
        await kube.create(manifest)
    for rev, replicas in actions.scale.items():
        await kube.scale(ns, objects.revision_name(name, rev), replicas)
    for rev in actions.delete_revisions:
        await kube.delete_revision(ns, name, rev)
        post_event(body, "Normal", "RevisionCollected", f"revision {rev} removed (beyond revisionHistoryLimit)")
    # The status (the rollout's memory) first, then the traffic. Killed in
    # between, the next pass finds the plan behind the status and writes it
    # forward. The other order would find the status behind the plan, decide
    # the old step again and move traffic back: a step run twice.
    patched = None
    if actions.status is not None:
        log.debug("status patch %s/%s: %s", ns, name, actions.status)
        patched = await kube.patch_status(ns, name, actions.status)
    if actions.plan is not None:
        await kube.write_plan(objects.build_traffic_plan_configmap(body, actions.plan.model_dump_json(by_alias=True)))
    for etype, reason, message in actions.events:
        # The same decision seen twice before the watch catches up posts once.
        if (key := f"{reason}:{message}") not in emitted:
            emitted.add(key)
            post_event(body, etype, reason, message)
    return patched


def _invalid_spec_status(body: dict[str, Any], message: str, now: datetime) -> dict[str, Any] | None:
    """Status for a spec the API server accepted but the operator cannot use (a missing ConfigMap)."""
    meta, current = body["metadata"], body.get("status") or {}
    wanted: dict[str, Any] = {"phase": "Failed", "message": message, "observedGeneration": meta.get("generation")}
    if all(current.get(k) == v for k, v in wanted.items()):
        return None
    wanted["conditions"] = merge_conditions(
        current.get("conditions") or [], stalled("InvalidSpec", message), meta.get("generation"), now.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    return wanted


async def run_analysis(spec: InferenceStackSpec, meta: dict[str, Any], status: dict[str, Any], now: datetime) -> Analysis | None:
    state = RolloutState.from_status(status)
    if not analysis_due(spec, state, now) or not state.stable or not state.candidate:
        return None
    if Runtime.prometheus is None:
        Runtime.prometheus = PrometheusClient(Runtime.config.prometheus_url, timeout=Runtime.config.prometheus_timeout_seconds)
    verdicts = await analyse(spec, meta["name"], meta["namespace"], state.stable, state.candidate, Runtime.prometheus)
    # The time the data was read, so a step only ends on evidence gathered after it began.
    return Analysis(state.candidate, datetime.now(UTC), tuple(verdicts))


def desired_plan(meta, spec, decision: Decision, parts: dict[str, dict], current_json: str | None):
    """The traffic plan the decision asks for, or None when the current one already says it."""
    t = decision.traffic
    if not t.stable or t.stable not in parts:
        return None
    candidate = (t.candidate, parts[t.candidate]) if t.candidate and t.candidate in parts else None
    current = parse_current(current_json)
    plan = traffic_plan(
        meta, spec, Runtime.config, (t.stable, parts[t.stable]), candidate,
        candidate_weight=t.candidate_weight, shadow_percent=t.shadow_percent, serial=current.serial + 1 if current else 1,
    )  # fmt: skip
    return plan if plan_differs(current, plan) else None


async def reconcile_once(body: dict[str, Any], indexes: tuple, emitted: set[str]) -> tuple[timedelta | None, dict | None]:
    """One level-based pass.

    Returns when the rollout wants to be looked at again, and the stack as
    the status patch left it (None when nothing was patched).
    """
    kube = Runtime.kube
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    now = datetime.now(UTC)
    try:
        spec = InferenceStackSpec.model_validate(body.get("spec") or {})
        refs = await resolve_refs(kube, meta["namespace"], spec)
    except (ValidationError, UnresolvedReference) as e:
        # Wrong input is the user's to fix: say so in status, do not crash-loop.
        message = str(e).splitlines()[0] if isinstance(e, ValidationError) else str(e)
        if (patch := _invalid_spec_status(body, message, now)) is not None:
            post_event(body, "Warning", "InvalidSpec", message)
            return None, await kube.patch_status(*key, patch)
        return None, None
    revision = compute_revision(spec, refs)
    observed, parts = observe(key, *indexes)
    parts.setdefault(revision.hash, revision.parts)
    analysis = await run_analysis(spec, meta, body.get("status") or {}, now)
    actions, decision = reconcile(body, spec, revision, observed, Runtime.config, now, analysis)
    actions.plan = desired_plan(meta, spec, decision, parts, observed.plan_json)
    patched = await apply(kube, body, actions, emitted)
    if spec.traffic.provider == TrafficProvider.GATEWAY_API and decision.traffic.stable:
        # After the status, like the plan (see apply); a no-op when the route already says it.
        await kube.apply_httproute(build_httproute(body, spec, decision.traffic, Runtime.config))
    metrics.CANDIDATE_WEIGHT.labels(*key).set(decision.traffic.candidate_weight)
    if decision.rollback is not None and actions.status is not None:
        metrics.ROLLBACKS.labels(*key, decision.rollback.cause).inc()
    return decision.requeue_after, patched


class StackLoop:
    """The one reconcile loop of one stack; passes never overlap.

    A plain task rather than a kopf daemon: kopf guards daemons with a
    finalizer, which would block deleting a stack (and its namespace, and a
    GitOps prune) whenever the operator is down. Owner references already
    clean up everything a stack owns, so no finalizer is needed.
    """

    def __init__(self, key: tuple[str, str], body: dict[str, Any], indexes: tuple) -> None:
        self.key = key
        self.body = body
        self.indexes = indexes
        self.wake = asyncio.Event()
        self.emitted: set[str] = set()
        self.task = asyncio.create_task(self.run(), name=f"reconcile {key[0]}/{key[1]}")

    async def run(self) -> None:
        namespace, name = self.key
        backoff = 1.0
        while True:
            self.wake.clear()
            try:
                with metrics.RECONCILE_SECONDS.time():
                    requeue, patched = await reconcile_once(self.body, self.indexes, self.emitted)
                if patched is not None:
                    # Decide next from what we wrote, not from a watch event
                    # that may still be on its way: a pass woken by another
                    # object's event must not redo this pass's step.
                    self.update(patched)
                backoff = 1.0
                timeout = Runtime.config.resync_seconds
                if requeue is not None:
                    # Wake up right when a step's timer ends, not up to a resync later.
                    timeout = max(0.05, min(timeout, requeue.total_seconds()))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # one bad pass must not kill the loop
                metrics.RECONCILE_ERRORS.labels(namespace, name).inc()
                log.exception("reconcile %s/%s failed: %s", namespace, name, e)
                timeout = backoff = min(backoff * 2, 60.0)
            metrics.RECONCILES.labels(namespace, name).inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=timeout)

    def update(self, body: dict[str, Any]) -> None:
        """Take a newer version of the stack; ignore one older than what we hold."""
        if _rv(body) >= _rv(self.body):
            self.body = body

    def stop(self) -> None:
        self.task.cancel()


def _rv(body: dict[str, Any]) -> int:
    # resourceVersion is opaque by contract, but for one object served by one
    # etcd it grows monotonically; 0 makes an unparsable one always lose.
    try:
        return int(body["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return 0


@kopf.on.event(GROUP, VERSION, PLURAL)  # type: ignore[arg-type]
async def stack_changed(type, body, namespace, name, deployment_index, revision_index, plan_index, **_):
    key = (namespace, name)
    loop = Runtime.loops.get(key)
    if type == "DELETED" or body.get("metadata", {}).get("deletionTimestamp"):
        if loop:
            loop.stop()
            del Runtime.loops[key]
        return
    snapshot = copy.deepcopy(dict(body))
    if loop is None:
        Runtime.loops[key] = StackLoop(key, snapshot, (deployment_index, revision_index, plan_index))
    else:
        loop.update(snapshot)
        loop.wake.set()


@kopf.on.cleanup()
async def stop_loops(**_):
    for loop in Runtime.loops.values():
        loop.stop()
    await asyncio.gather(*(loop.task for loop in Runtime.loops.values()), return_exceptions=True)
    Runtime.loops.clear()
