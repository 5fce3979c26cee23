"""Plans from ConfigMaps through the Kubernetes API (list + watch), not from a mounted volume.

A mounted ConfigMap reaches the pod only after kubelet's sync period (up to a
minute), which would make a rollback slow; a watch sees the write at once.

The official client is synchronous, so list+watch runs in a daemon thread and
hands every change to the event loop with ``call_soon_threadsafe``: the
:class:`PlanStore` is only ever touched from the loop's thread.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from inferstack.core.trafficplan import PLAN_KEY, PLAN_LABEL
from inferstack.router.metrics import RouterMetrics
from inferstack.router.plansource import PlanError, PlanStore, parse_plan

log = logging.getLogger(__name__)


class ConfigMapPlans:
    """Turns ConfigMap snapshots and events into store changes; runs on the loop thread.

    A ConfigMap whose plan does not parse is rejected whole and the last good
    plan from it stays in force. A plan must name the ConfigMap's own
    namespace: otherwise anyone allowed to write ConfigMaps in one namespace
    could redirect another namespace's traffic.
    """

    def __init__(self, store: PlanStore, metrics: RouterMetrics) -> None:
        self.store = store
        self.metrics = metrics
        self._keys: dict[str, str] = {}  # ConfigMap namespace/name -> plan key

    def upsert(self, namespace: str, name: str, data: dict[str, str] | None) -> None:
        source = f"{namespace}/{name}"
        try:
            text = (data or {}).get(PLAN_KEY)
            if text is None:
                raise PlanError(f"no {PLAN_KEY} key")
            plan = parse_plan(text)
            if plan.namespace != namespace:
                raise PlanError(f"plan names namespace {plan.namespace!r} but lives in {namespace!r}")
        except PlanError as exc:
            log.error("rejected plan in ConfigMap %s, keeping the last good plan: %s", source, exc)
            self.metrics.plan_errors.labels(source).inc()
            return
        old = self._keys.get(source)
        if old is not None and old != plan.key:
            self.store.remove(old)
        self._keys[source] = plan.key
        self.store.apply(plan)

    def delete(self, namespace: str, name: str) -> None:
        key = self._keys.pop(f"{namespace}/{name}", None)
        if key is not None and key not in self._keys.values():
            self.store.remove(key)

    def replace_all(self, items: list[tuple[str, str, dict[str, str] | None]]) -> None:
        """A fresh list: apply every item, forget ConfigMaps deleted while we were not watching."""
        present = {f"{ns}/{name}" for ns, name, _ in items}
        for source in list(self._keys):
            if source not in present:
                ns, _, name = source.partition("/")
                self.delete(ns, name)
        for ns, name, data in items:
            self.upsert(ns, name, data)


def default_api(kubeconfig: str | None, in_cluster: bool) -> client.CoreV1Api:
    cfg = client.Configuration()
    if in_cluster or (kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST")):
        config.load_incluster_config(client_configuration=cfg)
    else:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    return client.CoreV1Api(client.ApiClient(cfg))


class KubePlanSource:
    def __init__(
        self,
        metrics: RouterMetrics,
        *,
        namespace: str | None = None,
        kubeconfig: str | None = None,
        in_cluster: bool = False,
        api_factory: Callable[[], client.CoreV1Api] | None = None,
        watch_timeout: int = 300,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.metrics = metrics
        self.namespace = namespace
        self._api_factory = api_factory or (lambda: default_api(kubeconfig, in_cluster))
        self.watch_timeout = watch_timeout
        self.backoff_min, self.backoff_max = backoff
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: watch.Watch | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._plans: ConfigMapPlans | None = None

    async def start(self, store: PlanStore) -> None:
        self._loop = asyncio.get_running_loop()
        self._plans = ConfigMapPlans(store, self.metrics)
        self._thread = threading.Thread(target=self._run, name="kube-plan-source", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        # The thread may be blocked in a read until the watch times out; it is a
        # daemon and touches nothing once stopped, so do not wait long for it.
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 1.0)

    # ------------------------------------------------------------ the thread

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed: the router is shutting down
            self._stop.set()

    def _list_call(self, api: client.CoreV1Api) -> tuple[Callable[..., Any], tuple[str, ...]]:
        # The bound method itself, not a wrapper: Watch reads its docstring to
        # learn the type to deserialize events into.
        if self.namespace:
            return api.list_namespaced_config_map, (self.namespace,)
        return api.list_config_map_for_all_namespaces, ()

    def _run(self) -> None:
        delay = self.backoff_min
        api: client.CoreV1Api | None = None
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if api is None:
                    api = self._api_factory()
                if resource_version is None:
                    resource_version = self._list(api)
                resource_version = self._watch_from(api, resource_version)
                delay = self.backoff_min
            except ApiException as exc:
                if exc.status == 410:  # our resourceVersion is too old: list again, at once
                    log.info("plan watch expired (410), re-listing")
                    resource_version = None
                    continue
                log.warning("plan watch failed (HTTP %s), keeping the last good plans: %s", exc.status, exc.reason)
                self._stop.wait(delay + random.uniform(0, delay / 2))
                delay = min(delay * 2, self.backoff_max)
            except Exception as exc:
                # The API server is unreachable or the config is bad: keep serving
                # the plans we have and retry with backoff.
                log.warning("plan watch failed, keeping the last good plans: %r", exc)
                self._stop.wait(delay + random.uniform(0, delay / 2))
                delay = min(delay * 2, self.backoff_max)

    def _with_secrets(self, api: client.CoreV1Api, namespace: str, data: dict[str, str] | None) -> dict[str, str] | None:
        """Fill each bundle's apiKey from its apiKeySecretRef, here in the watch thread (a blocking read).

        Only Secrets of the plan's own namespace are read. A token that cannot
        be read leaves the plan as it is, without a token: parse_plan then
        rejects it whole (``apiKey`` missing where a ref is set) and the last
        good plan stays in force. Tokens are re-read whenever the plan changes.
        """
        text = (data or {}).get(PLAN_KEY)
        if not text or "apiKeySecretRef" not in text:
            return data
        try:
            plan = json.loads(text)
            for role in ("stable", "candidate"):
                bundle = plan.get(role) or {}
                ref = bundle.get("apiKeySecretRef")
                if ref:
                    secret = api.read_namespaced_secret(ref["name"], namespace, _request_timeout=10)
                    raw = (secret.data or {}).get(ref["key"])
                    if raw is None:
                        raise KeyError(f"Secret {namespace}/{ref['name']} has no key {ref['key']!r}")
                    bundle["apiKey"] = base64.b64decode(raw).decode().strip()
            evaluation = plan.get("evaluation") or {}
            keys = evaluation.setdefault("judgeApiKeys", {})
            for ev in evaluation.get("evaluators") or []:
                ref = ((ev.get("judge") or {}).get("endpoint") or {}).get("apiKeySecretRef")
                if ref:
                    # A judge token that cannot be read is not the plan's fault:
                    # serve the plan, and let that judge's calls count as errors.
                    try:
                        secret = api.read_namespaced_secret(ref["name"], namespace, _request_timeout=10)
                        raw = (secret.data or {}).get(ref.get("key", "api-key"))
                        if raw is not None:
                            keys[ev["name"]] = base64.b64decode(raw).decode().strip()
                    except ApiException as exc:
                        log.error("plan in %s: cannot read judge %s's token: HTTP %s", namespace, ev.get("name"), exc.status)
        except (ApiException, KeyError, ValueError, TypeError) as exc:
            log.error("plan in %s: cannot read an endpoint token: %s", namespace, exc)
            return data
        return {**(data or {}), PLAN_KEY: json.dumps(plan)}

    def _list(self, api: client.CoreV1Api) -> str:
        fn, args = self._list_call(api)
        result = fn(*args, label_selector=PLAN_LABEL, _request_timeout=30)
        items = [(cm.metadata.namespace, cm.metadata.name, self._with_secrets(api, cm.metadata.namespace, cm.data)) for cm in result.items]
        assert self._plans is not None
        self._post(self._plans.replace_all, items)
        return str(result.metadata.resource_version)

    def _watch_from(self, api: client.CoreV1Api, resource_version: str) -> str:
        assert self._plans is not None
        self._watch = w = watch.Watch()
        # timeout_seconds makes the server end the watch cleanly and the client
        # raise 410 itself instead of retrying silently; _request_timeout bounds
        # a dead connection that the server never closes.
        fn, args = self._list_call(api)
        stream = w.stream(
            fn,
            *args,
            label_selector=PLAN_LABEL,
            resource_version=resource_version,
            timeout_seconds=self.watch_timeout,
            allow_watch_bookmarks=True,
            _request_timeout=self.watch_timeout + 30,
        )
        for event in stream:
            if self._stop.is_set():
                w.stop()
                break
            obj = event["object"]
            kind = event["type"]
            meta = getattr(obj, "metadata", None)
            if meta is None:
                continue
            if meta.resource_version:
                resource_version = meta.resource_version
            if kind in ("ADDED", "MODIFIED"):
                self._post(self._plans.upsert, meta.namespace, meta.name, self._with_secrets(api, meta.namespace, obj.data))
            elif kind == "DELETED":
                self._post(self._plans.delete, meta.namespace, meta.name)
        return resource_version
