"""Plans from TrafficPlan objects through the Kubernetes API (list + watch), not a mounted volume.

A mounted volume reaches the pod only after kubelet's sync period (up to a
minute), which would make a rollback slow; a watch sees the write at once.

The router obeys a plan only when :func:`inferstack.router.planowner.refusal`
says so: a TrafficPlan its live InferenceStack controls (name and UID). So it
watches two resources: TrafficPlans, and InferenceStacks as metadata only
(their UIDs; never their specs). Optionally (``legacy_configmaps``) it also
watches the metadata of ConfigMaps with the old plan label, only to count and
log them as ignored: it never reads their data.

The official client is synchronous, so each list+watch runs in a daemon thread
and hands every change to the event loop with ``call_soon_threadsafe``: the
:class:`TrustedPlans` table and the :class:`PlanStore` are only ever touched
from the loop's thread.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from inferstack import GROUP, PLURAL, VERSION
from inferstack.core.trafficplan import PLAN_LABEL, PLAN_PLURAL, TrafficPlan
from inferstack.router.metrics import RouterMetrics
from inferstack.router.planowner import (
    EXPLAIN,
    LIVE_REASONS,
    Ignored,
    controller,
    refusal,
    structural_refusal,
)
from inferstack.router.plansource import PlanError, PlanStore, parse_plan

log = logging.getLogger(__name__)

# Ask for PartialObjectMetadata: the router needs stacks' UIDs and ConfigMaps'
# names, not their contents. Plain JSON after the comma if a server cannot. A
# list is a PartialObjectMetadataList; a watch must ask for the item type (the
# API server sends an empty stream to a watch that asks for the list type).
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
METADATA_WATCH = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
REMEMBERED = 4096  # objects remembered as logged/counted; then forgotten (at worst logged again)

Key = tuple[str, str]  # (namespace, name)


@dataclass
class PlanObject:
    """A TrafficPlan as last seen, and the plan its spec holds (None: it did not parse)."""

    meta: dict[str, Any]
    stack: Any
    namespace: Any
    plan: TrafficPlan | None


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    keep = ("name", "namespace", "uid", "resourceVersion", "ownerReferences")
    return {k: copy.deepcopy(meta[k]) for k in keep if k in meta}


class TrustedPlans:
    """Turns TrafficPlans, InferenceStacks and old plan ConfigMaps into store changes; runs on the loop thread.

    A plan is obeyed only when :func:`refusal` accepts it against the live
    stacks. A new version that is refused (its owner removed or changed) is
    ignored and the last good plan of that object stays in force, as for a
    plan that does not parse: the operator rewrites its plan at its next pass.
    The plan in force is withdrawn only when the stack it was accepted for is
    gone (deleted, or created again with a new UID) or the object is deleted.
    Until the first list of stacks has arrived nothing is decided, so a
    start-up race ignores nothing.

    Ignored objects are counted once per object version and reason, and logged
    once per object and reason, with no contents. The two reasons that depend
    on the stacks' watch (``stack_missing``, ``uid_mismatch``) are decided for
    that version again ``confirm_after`` seconds later, against the stacks as
    they are then, and counted only if it would still be refused and its owner
    UID was never a UID of that stack: the plan of a stack just created may
    arrive before the stack does, and the plan of a stack just deleted (or
    created again) is garbage the collector removes; neither is an alarm. A
    forged version is counted even when the operator rewrote it meanwhile.

    A TrafficPlan whose spec does not parse or validate is rejected whole
    (``plan_errors_total``) and the last good plan from it stays in force.
    """

    def __init__(
        self,
        store: PlanStore,
        metrics: RouterMetrics,
        *,
        confirm_after: float = 5.0,
        later: Callable[[float, Callable[[], None]], Any] | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.confirm_after = confirm_after
        self._later = later or (lambda delay, fn: asyncio.get_running_loop().call_later(delay, fn))
        self.stacks: dict[Key, str] = {}  # live InferenceStacks: (namespace, name) -> uid
        self.stacks_listed = False
        self.past_uids: dict[Key, set[str]] = {}  # every UID seen for a stack name: its plans' leftovers are no forgery
        self.objects: dict[Key, PlanObject] = {}  # TrafficPlans seen, by (namespace, object name)
        # TrafficPlans whose plan is in the store -> (its plan key, its stack, the stack UID it was
        # accepted for, the TrafficPlan object's own UID)
        self.in_force: dict[Key, tuple[str, str, str, str]] = {}
        self._configmaps: set[Key] = set()
        self._counted: set[tuple[str, str, str]] = set()
        self._logged: set[tuple[str, str, str]] = set()

    # ------------------------------------------------------------ stacks

    def stack_upsert(self, namespace: str, name: str, uid: str) -> None:
        self.stacks[(namespace, name)] = uid
        self._remember(namespace, name, uid)
        self._decide_stack(namespace, name)

    def _remember(self, namespace: str, name: str, uid: str) -> None:
        if len(self.past_uids) >= REMEMBERED:
            self.past_uids.clear()  # at worst a leftover plan is counted once
        uids = self.past_uids.setdefault((namespace, name), set())
        if len(uids) < 16:
            uids.add(uid)

    def stack_delete(self, namespace: str, name: str) -> None:
        self.stacks.pop((namespace, name), None)
        self._decide_stack(namespace, name)

    def stacks_replace(self, items: list[tuple[str, str, str]]) -> None:
        self.stacks = {(ns, name): uid for ns, name, uid in items}
        for ns, name, uid in items:
            self._remember(ns, name, uid)
        self.stacks_listed = True
        for key in list(self.objects):
            self._decide(key)

    def _decide_stack(self, namespace: str, name: str) -> None:
        for key, obj in list(self.objects.items()):
            if key[0] == namespace and (obj.stack == name or self.in_force.get(key, ("", "", "", ""))[1] == name):
                self._decide(key)

    # ------------------------------------------------------------- plans

    def plan_upsert(self, obj: dict[str, Any]) -> None:
        meta = _meta(obj)
        key = (meta.get("namespace", ""), meta.get("name", ""))
        raw = obj.get("spec")
        spec: dict[str, Any] = raw if isinstance(raw, dict) else {}
        plan: TrafficPlan | None = None
        if structural_refusal(meta, spec.get("stack"), spec.get("namespace")) is None:
            try:
                plan = parse_plan(json.dumps(spec))
            except PlanError as exc:
                log.error("rejected TrafficPlan %s/%s, keeping the last good plan: %s", *key, exc)
                self.metrics.plan_errors.labels(f"{key[0]}/{key[1]}").inc()
                if key in self.objects:
                    return
        self.objects[key] = PlanObject(meta, spec.get("stack"), spec.get("namespace"), plan)
        self._decide(key)

    def plan_delete(self, namespace: str, name: str) -> None:
        self.objects.pop((namespace, name), None)
        self._withdraw((namespace, name))

    def plans_replace(self, items: list[dict[str, Any]]) -> None:
        """A fresh list: apply every item, forget TrafficPlans deleted while we were not watching."""
        present = {((o.get("metadata") or {}).get("namespace", ""), (o.get("metadata") or {}).get("name", "")) for o in items}
        for key in list(self.objects):
            if key not in present:
                self.plan_delete(*key)
        for obj in items:
            self.plan_upsert(obj)

    def _decide(self, key: Key) -> None:
        if not self.stacks_listed:
            return
        obj = self.objects.get(key)
        if obj is None:
            return
        live = self.stacks.get((key[0], obj.stack)) if isinstance(obj.stack, str) else None
        reason = refusal(obj.meta, obj.stack, obj.namespace, live)
        if reason is not None:
            if (held := self.in_force.get(key)) is not None and self.stacks.get((key[0], held[1])) != held[2]:
                self._withdraw(key)  # the stack that plan was accepted for is gone
            if reason in LIVE_REASONS:
                self._later(self.confirm_after, lambda: self._confirm(key, obj, reason))
            else:
                self._ignored("TrafficPlan", key, obj.meta, reason)
            return
        if obj.plan is None:
            return  # accepted, but it never parsed: nothing to serve from it
        owner, uid = live or "", str(obj.meta.get("uid") or "")
        held = self.in_force.get(key, ("", "", owner, uid))
        if held[2] != owner or held[3] != uid:
            # The stack was created again, or its TrafficPlan was (deleted by hand or by the
            # garbage collector, then written anew by the operator, which restarts its serials
            # from what it sees): a new sequence. Without this, a delete and a create that
            # fall between two lists of a broken watch would leave the old plan in force
            # until the new serials overtook it.
            self._withdraw(key)
        if self.store.apply(obj.plan):
            self.in_force[key] = (obj.plan.key, obj.plan.stack, owner, uid)

    def _confirm(self, key: Key, version: PlanObject, reason: Ignored) -> None:
        live = self.stacks.get((key[0], version.stack)) if isinstance(version.stack, str) else None
        if refusal(version.meta, version.stack, version.namespace, live) not in LIVE_REASONS:
            return  # its stack has arrived: it was a race, not a forgery
        ref = controller(version.meta) or {}
        if ref.get("uid") in self.past_uids.get((key[0], str(version.stack)), set()):
            return  # the plan of a stack since deleted or created again: garbage, not a forgery
        self._ignored("TrafficPlan", key, version.meta, reason)

    def _withdraw(self, key: Key) -> None:
        if (held := self.in_force.pop(key, None)) is not None:
            self.store.remove(held[0])

    # --------------------------------------------- old plan ConfigMaps

    def configmap_upsert(self, obj: dict[str, Any]) -> None:
        meta = _meta(obj)
        key = (meta.get("namespace", ""), meta.get("name", ""))
        self._configmaps.add(key)
        self._ignored("ConfigMap", key, meta, Ignored.CONFIGMAP)

    def configmap_delete(self, namespace: str, name: str) -> None:
        self._configmaps.discard((namespace, name))

    def configmaps_replace(self, items: list[dict[str, Any]]) -> None:
        self._configmaps.clear()
        for obj in items:
            self.configmap_upsert(obj)

    # ------------------------------------------------------------ alarms

    def _ignored(self, kind: str, key: Key, meta: dict[str, Any], reason: Ignored) -> None:
        if len(self._counted) >= REMEMBERED:
            self._counted.clear()
        if len(self._logged) >= REMEMBERED:
            self._logged.clear()
        version = (meta.get("uid", ""), meta.get("resourceVersion", ""), reason.value)
        if version not in self._counted:
            self._counted.add(version)
            self.metrics.plans_ignored.labels(reason.value).inc()
        if (logged := (kind, f"{key[0]}/{key[1]}", reason.value)) not in self._logged:
            self._logged.add(logged)
            # Names only: the object's contents (URLs, Secret names) are an attacker's words.
            log.warning("ignoring %s %s/%s (%s): %s", kind, key[0], key[1], reason.value, EXPLAIN[reason])


def default_api_client(kubeconfig: str | None, in_cluster: bool) -> client.ApiClient:
    cfg = client.Configuration()
    if in_cluster or (kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST")):
        config.load_incluster_config(client_configuration=cfg)
    else:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    return client.ApiClient(cfg)


def default_api(kubeconfig: str | None, in_cluster: bool) -> client.CoreV1Api:
    """The core API alone (the key Secrets' source uses it)."""
    return client.CoreV1Api(default_api_client(kubeconfig, in_cluster))


# The list calls, one resource each. The bound method itself, never a wrapper:
# Watch reads its signature to learn what it returns.


Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def stacks_call(api: client.ApiClient, namespace: str | None, watching: bool) -> Call:
    custom = client.CustomObjectsApi(api)
    headers = {"_headers": {"Accept": METADATA_WATCH if watching else METADATA_LIST}}
    if namespace:
        return custom.list_namespaced_custom_object, (GROUP, VERSION, namespace, PLURAL), headers
    return custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL), headers


def plans_call(api: client.ApiClient, namespace: str | None, watching: bool) -> Call:
    custom = client.CustomObjectsApi(api)
    if namespace:
        return custom.list_namespaced_custom_object, (GROUP, VERSION, namespace, PLAN_PLURAL), {}
    return custom.list_cluster_custom_object, (GROUP, VERSION, PLAN_PLURAL), {}


def configmaps_call(api: client.ApiClient, namespace: str | None, watching: bool) -> Call:
    core = client.CoreV1Api(api)
    kwargs = {"label_selector": PLAN_LABEL, "_headers": {"Accept": METADATA_WATCH if watching else METADATA_LIST}}
    if namespace:
        return core.list_namespaced_config_map, (namespace,), kwargs
    return core.list_config_map_for_all_namespaces, (), kwargs


@dataclass
class Feed:
    """One resource to list and watch, and where its changes go on the loop thread."""

    name: str
    call: Callable[[client.ApiClient, str | None, bool], Call]  # (api, namespace, watching)
    replace: Callable[[list[dict[str, Any]]], None]
    upsert: Callable[[dict[str, Any]], None]
    delete: Callable[[str, str], None]
    prepare: Callable[[client.ApiClient, dict[str, Any]], dict[str, Any]] = lambda api, obj: obj  # in the thread


class KubePlanSource:
    def __init__(
        self,
        metrics: RouterMetrics,
        *,
        namespace: str | None = None,
        kubeconfig: str | None = None,
        in_cluster: bool = False,
        legacy_configmaps: bool = False,
        api_factory: Callable[[], client.ApiClient] | None = None,
        watch_timeout: int = 300,
        backoff: tuple[float, float] = (0.5, 30.0),
        confirm_after: float = 5.0,
    ) -> None:
        self.metrics = metrics
        self.namespace = namespace
        self.legacy_configmaps = legacy_configmaps
        self._api_factory = api_factory or (lambda: default_api_client(kubeconfig, in_cluster))
        self.watch_timeout = watch_timeout
        self.backoff_min, self.backoff_max = backoff
        self.confirm_after = confirm_after
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watches: list[watch.Watch] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.plans: TrustedPlans | None = None

    async def start(self, store: PlanStore) -> None:
        self._loop = asyncio.get_running_loop()
        plans = self.plans = TrustedPlans(store, self.metrics, confirm_after=self.confirm_after)

        def stacks_replace(items: list[dict[str, Any]]) -> None:
            plans.stacks_replace([(m.get("namespace", ""), m.get("name", ""), m.get("uid", "")) for m in map(_meta, items)])

        def stack_upsert(obj: dict[str, Any]) -> None:
            m = _meta(obj)
            plans.stack_upsert(m.get("namespace", ""), m.get("name", ""), m.get("uid", ""))

        feeds = [
            Feed("stacks", stacks_call, stacks_replace, stack_upsert, plans.stack_delete),
            Feed("plans", plans_call, plans.plans_replace, plans.plan_upsert, plans.plan_delete, self._with_secrets),
        ]
        if self.legacy_configmaps:
            feeds.append(Feed("legacy plan configmaps", configmaps_call, plans.configmaps_replace, plans.configmap_upsert, plans.configmap_delete))
        for feed in feeds:
            thread = threading.Thread(target=self._run, args=(feed,), name=f"kube-{feed.name}", daemon=True)
            self._threads.append(thread)
            thread.start()

    async def stop(self) -> None:
        self._stop.set()
        for w in list(self._watches):
            w.stop()
        # A thread may be blocked in a read until its watch times out; they are
        # daemons and touch nothing once stopped, so do not wait long for them.
        loop = asyncio.get_running_loop()
        for thread in self._threads:
            await loop.run_in_executor(None, thread.join, 1.0)

    # ----------------------------------------------------------- threads

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed: the router is shutting down
            self._stop.set()

    def _run(self, feed: Feed) -> None:
        delay = self.backoff_min
        api: client.ApiClient | None = None
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if api is None:
                    api = self._api_factory()
                if resource_version is None:
                    resource_version = self._list(api, feed)
                resource_version = self._watch_from(api, feed, resource_version)
                delay = self.backoff_min
            except ApiException as exc:
                if exc.status == 410:  # our resourceVersion is too old: list again, at once
                    log.info("%s watch expired (410), re-listing", feed.name)
                    resource_version = None
                    continue
                log.warning("%s watch failed (HTTP %s), keeping the last good plans: %s", feed.name, exc.status, exc.reason)
                self._stop.wait(delay + random.uniform(0, delay / 2))
                delay = min(delay * 2, self.backoff_max)
            except Exception as exc:
                # The API server is unreachable or the config is bad: keep serving
                # the plans we have and retry with backoff.
                log.warning("%s watch failed, keeping the last good plans: %r", feed.name, exc)
                self._stop.wait(delay + random.uniform(0, delay / 2))
                delay = min(delay * 2, self.backoff_max)

    def _list(self, api: client.ApiClient, feed: Feed) -> str:
        fn, args, kwargs = feed.call(api, self.namespace, False)
        resp = fn(*args, **kwargs, _request_timeout=30, _preload_content=False)
        body = json.loads(resp.data)
        items = [feed.prepare(api, obj) for obj in body.get("items") or []]
        self._post(feed.replace, items)
        return str((body.get("metadata") or {}).get("resourceVersion", ""))

    def _watch_from(self, api: client.ApiClient, feed: Feed, resource_version: str) -> str:
        w = watch.Watch()
        self._watches.append(w)
        fn, args, kwargs = feed.call(api, self.namespace, True)
        try:
            # timeout_seconds makes the server end the watch cleanly and the client
            # raise 410 itself instead of retrying silently; _request_timeout bounds
            # a dead connection that the server never closes.
            stream = w.stream(
                fn, *args, **kwargs,
                resource_version=resource_version, timeout_seconds=self.watch_timeout, allow_watch_bookmarks=True,
                _request_timeout=self.watch_timeout + 30,
            )  # fmt: skip
            for event in stream:
                if self._stop.is_set():
                    w.stop()
                    break
                obj = event.get("raw_object") or {}  # the JSON as sent: the same dicts as a list's items
                meta = obj.get("metadata") or {}
                if meta.get("resourceVersion"):
                    resource_version = meta["resourceVersion"]
                if event.get("type") in ("ADDED", "MODIFIED"):
                    self._post(feed.upsert, feed.prepare(api, obj))
                elif event.get("type") == "DELETED":
                    self._post(feed.delete, meta.get("namespace", ""), meta.get("name", ""))
        finally:
            self._watches.remove(w)
        return resource_version

    def _with_secrets(self, api: client.ApiClient, obj: dict[str, Any]) -> dict[str, Any]:
        """Fill each bundle's apiKey from its apiKeySecretRef, here in the watch thread (a blocking read).

        Only for a plan that could be trusted (its name, namespace and
        controller say so; the live UID is checked on the loop), and only
        Secrets of the plan's own namespace are read: a plan names a Secret by
        name and key, never by namespace. A token that cannot be read leaves
        the plan without a token: parse_plan then rejects it whole (``apiKey``
        missing where a ref is set) and the last good plan stays in force.
        Tokens are re-read whenever the plan changes.
        """
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace", "")
        spec = obj.get("spec")
        if not isinstance(spec, dict) or structural_refusal(meta, spec.get("stack"), spec.get("namespace")) is not None:
            return obj
        text = json.dumps(spec)
        if "apiKeySecretRef" not in text and "storeSecretRef" not in text:
            return obj
        core = client.CoreV1Api(api)
        spec = copy.deepcopy(spec)

        def read(ref: dict[str, Any], key: str) -> str:
            secret = core.read_namespaced_secret(ref["name"], namespace, _request_timeout=10)
            raw = (secret.data or {}).get(key)
            if raw is None:
                raise KeyError(f"Secret {namespace}/{ref['name']} has no key {key!r}")
            return base64.b64decode(raw).decode().strip()

        def token(ref: dict[str, Any], key: str) -> str:
            value = read(ref, key)
            if not sendable(value):
                raise ValueError(f"Secret {namespace}/{ref['name']} key {key!r} holds no token an HTTP header can carry "
                                 "(printable ASCII only)")
            return value

        try:
            for role in ("stable", "candidate"):
                bundle = spec.get(role) or {}
                ref = bundle.get("apiKeySecretRef")
                if ref:
                    bundle["apiKey"] = token(ref, ref["key"])
                # The vector store's DSN (user and password in it), by the same rules as a token.
                retrieval = bundle.get("retrieval") or {}
                if retrieval.get("storeSecretRef"):
                    retrieval["storeDsn"] = read(retrieval["storeSecretRef"], retrieval["storeSecretRef"]["key"])
            evaluation = spec.get("evaluation") or {}
            keys = evaluation.setdefault("judgeApiKeys", {})
            for ev in evaluation.get("evaluators") or []:
                ref = ((ev.get("judge") or {}).get("endpoint") or {}).get("apiKeySecretRef")
                if ref:
                    # A judge token that cannot be read is not the plan's fault:
                    # serve the plan, and let that judge's calls count as errors.
                    try:
                        keys[ev["name"]] = token(ref, ref.get("key", "api-key"))
                    except (ApiException, KeyError, ValueError, TypeError) as exc:
                        log.error("plan in %s: cannot read judge %s's token: %s", namespace, ev.get("name"), why(exc))
        except (ApiException, KeyError, ValueError, TypeError) as exc:
            log.error("plan in %s: cannot read an endpoint token or store DSN: %s", namespace, why(exc))
            return obj
        return {**obj, "spec": spec}


def sendable(token: str) -> bool:
    """Whether a token can go in an HTTP header as it is: printable ASCII. A control or non-ASCII character
    would make the HTTP client refuse every request to the endpoint (a 500 each); refused here, the plan is
    rejected once, and the last good plan stays."""
    return token.isascii() and token.isprintable()


def why(exc: Exception) -> str:
    """What went wrong reading a Secret, for the log: never a value of it. An API error is its status and
    reason only (its string is several lines of the API server's headers and body)."""
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason or ''}".strip()
    return str(exc)
