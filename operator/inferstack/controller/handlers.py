"""kopf wiring: watches feed in-memory indexes; one reconcile loop per stack.

Design:

* Owned Deployments, ControllerRevisions and traffic plans are indexed from
  kopf's watch streams, so a reconcile pass reads memory, not the API server.
* Each stack has one daemon that runs ``reconcile_once`` serially (no two
  passes for one stack ever race). It wakes on any event of the stack or of
  an object it owns, and every ``resyncSeconds`` to move rollout timers.
* The decision is made by the pure core; this module only gathers inputs,
  calls the core and applies the returned actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from inferstack import GROUP, PLURAL, VERSION
from inferstack.api.v1alpha1 import InferenceStackSpec
from inferstack.controller import metrics
from inferstack.controller.kube import Kube
from inferstack.core import objects
from inferstack.core.config import OperatorConfig
from inferstack.core.plan import next_serial, plan_differs, traffic_plan
from inferstack.core.reconcile import Actions, DeploymentState, Observed, reconcile
from inferstack.core.revision import ResolvedRefs, UnresolvedReference, compute_revision
from inferstack.core.traffic import PLAN_KEY, PLAN_LABEL

log = logging.getLogger(__name__)

OWNED = {objects.LABEL_MANAGED_BY: objects.MANAGER}


class Runtime:
    """Process-wide state set at startup: the API client and the configuration."""

    kube: Kube
    config: OperatorConfig = OperatorConfig()
    wakeups: dict[tuple[str, str], asyncio.Event] = {}


def poke(namespace: str | None, stack: str | None) -> None:
    if namespace and stack and (ev := Runtime.wakeups.get((namespace, stack))):
        ev.set()


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


@kopf.on.event(GROUP, VERSION, PLURAL)
def stack_changed(namespace, name, **_):
    poke(namespace, name)


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


async def apply(kube: Kube, body: dict[str, Any], actions: Actions, emitted: set[str]) -> None:
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    for manifest in actions.create:
        await kube.create(manifest)
    for rev, replicas in actions.scale.items():
        await kube.scale(ns, objects.revision_name(name, rev), replicas)
    for rev in actions.delete_revisions:
        await kube.delete_revision(ns, name, rev)
        kopf.info(body, reason="RevisionCollected", message=f"revision {rev} removed (beyond revisionHistoryLimit)")
    if actions.plan is not None:
        await kube.write_plan(objects.build_traffic_plan_configmap(body, actions.plan.model_dump_json(by_alias=True)))
    if actions.status is not None:
        await kube.patch_status(ns, name, actions.status)
    for etype, reason, message in actions.events:
        # The same decision seen twice before the watch catches up posts once.
        if (key := f"{reason}:{message}") not in emitted:
            emitted.add(key)
            kopf.event(body, type=etype, reason=reason, message=message)


async def reconcile_once(body: dict[str, Any], indexes: tuple, emitted: set[str]) -> Actions:
    kube, config = Runtime.kube, Runtime.config
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    now = datetime.now(UTC)
    try:
        spec = InferenceStackSpec.model_validate(body.get("spec") or {})
        refs = await resolve_refs(kube, meta["namespace"], spec)
    except (ValidationError, UnresolvedReference) as e:
        # Wrong input is the user's to fix: say so in status, do not crash-loop.
        message = str(e).splitlines()[0] if isinstance(e, ValidationError) else str(e)
        stalled = {
            "phase": "Failed",
            "message": message,
            "observedGeneration": meta.get("generation"),
        }
        current = body.get("status") or {}
        if any(current.get(k) != v for k, v in stalled.items()):
            from inferstack.core.status import READY, RECONCILING, STALLED, ConditionState, merge_conditions

            stalled["conditions"] = merge_conditions(
                current.get("conditions") or [],
                {
                    READY: ConditionState(False, "InvalidSpec", message),
                    RECONCILING: ConditionState(False, "InvalidSpec", ""),
                    STALLED: ConditionState(True, "InvalidSpec", message),
                },
                meta.get("generation"),
                now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            await kube.patch_status(*key, stalled)
            kopf.warn(body, reason="InvalidSpec", message=message)
        return Actions()
    revision = compute_revision(spec, refs)
    observed, parts = observe(key, *indexes)
    actions = reconcile(body, spec, revision, observed, config, now)
    parts.setdefault(revision.hash, revision.parts)

    status = {**(body.get("status") or {}), **(actions.status or {})}
    stable = status.get("stableRevision")
    if stable and stable in parts:
        plan = traffic_plan(meta, spec, config, (stable, parts[stable]), serial=next_serial(observed.plan_json))
        if plan_differs(observed.plan_json, plan):
            actions.plan = plan
    await apply(kube, body, actions, emitted)
    return actions


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0)
async def stack_daemon(stopped, body, namespace, name, deployment_index, revision_index, plan_index, logger, **_):
    key = (namespace, name)
    wake = Runtime.wakeups.setdefault(key, asyncio.Event())
    emitted: set[str] = set()
    backoff = 1.0
    try:
        while not stopped:
            wake.clear()
            try:
                with metrics.RECONCILE_SECONDS.time():
                    await reconcile_once(dict(body), (deployment_index, revision_index, plan_index), emitted)
                backoff = 1.0
                timeout = Runtime.config.resync_seconds
            except Exception as e:  # one bad pass must not kill the loop
                metrics.RECONCILE_ERRORS.labels(namespace, name).inc()
                logger.exception(f"reconcile failed: {e}")
                timeout = backoff = min(backoff * 2, 60.0)
            metrics.RECONCILES.labels(namespace, name).inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=timeout)
    finally:
        Runtime.wakeups.pop(key, None)
