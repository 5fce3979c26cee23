"""KubePlanSource against a small fake API server speaking the list/watch protocol.

The official client really talks HTTP to it (from the source's thread), so
the resourceVersion, 410 and reconnect handling is exercised end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from kubernetes import client

from inferstack.core.trafficplan import PLAN_KEY, PLAN_LABEL
from inferstack.router.kubesource import ConfigMapPlans, KubePlanSource
from inferstack.router.metrics import RouterMetrics
from inferstack.router.plansource import PlanStore


def plan_data(serial: int, namespace: str = "team-a", stack: str = "support", **extra: Any) -> dict[str, str]:
    plan = {
        "stack": stack,
        "namespace": namespace,
        "serial": serial,
        "stable": {"revision": f"rev-{serial}", "url": "http://127.0.0.1:1", "servedModel": "m", "cacheNamespace": "c"},
        **extra,
    }
    return {PLAN_KEY: json.dumps(plan)}


class FakeKube:
    """ConfigMaps in memory with resourceVersions, watch streams, compaction (410) and outages."""

    def __init__(self) -> None:
        self.rv = 100
        self.oldest = 0  # watches from before this resourceVersion get 410 Gone
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        self.changed = asyncio.Condition()
        self.down = False
        self.lists = 0

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def put(self, namespace: str, name: str, data: dict[str, str], labelled: bool = True) -> None:
        self.rv += 1
        kind = "MODIFIED" if (namespace, name) in self.objects else "ADDED"
        labels = {PLAN_LABEL: name} if labelled else {}
        obj = {"apiVersion": "v1", "kind": "ConfigMap", "data": data,
               "metadata": {"name": name, "namespace": namespace, "resourceVersion": str(self.rv), "labels": labels}}
        self.objects[(namespace, name)] = obj
        self.history.append((self.rv, kind, obj))
        await self._notify()

    async def delete(self, namespace: str, name: str) -> None:
        self.rv += 1
        obj = self.objects.pop((namespace, name))
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
        self.history.append((self.rv, "DELETED", obj))
        await self._notify()

    async def compact(self) -> None:
        self.oldest = self.rv + 1
        self.history.clear()
        await self._notify()

    async def set_down(self, down: bool) -> None:
        self.down = down
        await self._notify()

    def _visible(self, obj: dict[str, Any], namespace: str | None) -> bool:
        return PLAN_LABEL in obj["metadata"]["labels"] and namespace in (None, obj["metadata"]["namespace"])

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            return web.json_response({"kind": "Status", "code": 503, "message": "down"}, status=503)
        namespace = request.match_info.get("ns")
        if request.query.get("watch", "").lower() not in ("true", "1"):
            self.lists += 1
            items = [o for o in self.objects.values() if self._visible(o, namespace)]
            return web.json_response({"kind": "ConfigMapList", "apiVersion": "v1",
                                      "metadata": {"resourceVersion": str(self.rv)}, "items": items})
        since = int(request.query.get("resourceVersion", "0"))
        deadline = time.monotonic() + float(request.query.get("timeoutSeconds", "30"))
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        if since < self.oldest:
            gone = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired",
                    "message": "too old resource version", "code": 410}
            await resp.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            return resp
        oldest = self.oldest
        while time.monotonic() < deadline and not self.down and self.oldest == oldest:
            for rv, kind, obj in list(self.history):
                if rv > since and self._visible(obj, namespace):
                    await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
                    since = rv
            async with self.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), timeout=max(0.01, deadline - time.monotonic()))
        return resp


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeKube, str]]:
    kube = FakeKube()
    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{ns}/configmaps", kube.handle)
    app.router.add_get("/api/v1/configmaps", kube.handle)
    async with TestServer(app) as server:
        yield kube, str(server.make_url("")).rstrip("/")


def api_for(url: str) -> Callable[[], client.CoreV1Api]:
    def make() -> client.CoreV1Api:
        cfg = client.Configuration(host=url)
        return client.CoreV1Api(client.ApiClient(cfg))

    return make


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.02)


@pytest.fixture
async def running(fake) -> AsyncIterator[tuple[FakeKube, PlanStore, RouterMetrics]]:
    kube, url = fake
    metrics = RouterMetrics()
    store = PlanStore()
    source = KubePlanSource(metrics, namespace="team-a", api_factory=api_for(url), watch_timeout=2, backoff=(0.05, 0.2))
    await kube.put("team-a", "support-plan", plan_data(1))
    await source.start(store)
    await until(lambda: store.get("team-a/support") is not None)
    yield kube, store, metrics
    await source.stop()


def serial(store: PlanStore) -> int | None:
    plan = store.get("team-a/support")
    return plan.serial if plan else None


async def test_watch_applies_updates_and_ignores_older_serials(running) -> None:
    kube, store, _ = running
    await kube.put("team-a", "support-plan", plan_data(3))
    await until(lambda: serial(store) == 3)
    await kube.put("team-a", "support-plan", plan_data(2))
    await kube.put("team-a", "other-plan", plan_data(1, stack="other"))  # an event after the stale one
    await until(lambda: store.get("team-a/other") is not None)
    assert serial(store) == 3


async def test_malformed_plan_is_rejected_whole_and_last_good_kept(running) -> None:
    kube, store, metrics = running
    await kube.put("team-a", "support-plan", {PLAN_KEY: json.dumps({**json.loads(plan_data(5)[PLAN_KEY]), "candidateWeight": 50})})
    await until(lambda: metrics.registry.get_sample_value(
        "inferstack_router_plan_errors_total", {"source": "team-a/support-plan"}) == 1)
    assert serial(store) == 1
    assert store.get("team-a/support").candidate_weight == 0


async def test_deleted_configmap_removes_the_stack(running) -> None:
    kube, store, _ = running
    await kube.delete("team-a", "support-plan")
    await until(lambda: len(store) == 0)


async def test_410_gone_relists(running) -> None:
    kube, store, _ = running
    lists = kube.lists
    await kube.compact()  # ends the watch; its resourceVersion is now too old
    await kube.put("team-a", "support-plan", plan_data(7))
    await until(lambda: serial(store) == 7)
    assert kube.lists > lists


async def test_api_server_outage_keeps_plans_and_recovers(running) -> None:
    kube, store, _ = running
    await kube.set_down(True)
    await asyncio.sleep(0.3)  # several failed retries happen during this window
    assert serial(store) == 1
    await kube.put("team-a", "support-plan", plan_data(9))
    await kube.set_down(False)
    await until(lambda: serial(store) == 9)


def test_configmap_plans_rules() -> None:
    metrics = RouterMetrics()
    store = PlanStore()
    plans = ConfigMapPlans(store, metrics)
    plans.upsert("team-a", "p", plan_data(1))
    plans.upsert("team-a", "p", {"other": "x"})  # no plan key: rejected, last good kept
    plans.upsert("team-b", "evil", plan_data(9, namespace="team-a"))  # cross-namespace: rejected
    assert serial(store) == 1
    assert metrics.registry.get_sample_value("inferstack_router_plan_errors_total", {"source": "team-b/evil"}) == 1
    plans.replace_all([("team-a", "q", plan_data(2, stack="q"))])  # p vanished while not watching
    assert [p.key for p in store.plans()] == ["team-a/q"]
