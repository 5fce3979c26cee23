"""KubePlanSource against a small fake API server speaking the list/watch protocol.

The official client really talks HTTP to it (from the source's threads), so
the resourceVersion, 410 and reconnect handling is exercised end to end, for
the three feeds: TrafficPlans, InferenceStacks (metadata only) and, when asked,
ConfigMaps with the old plan label (metadata only, counted, never obeyed).
test_keysource.py runs the key source against the same fake (key Secrets).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from kubernetes import client

from inferstack.core.apikeys import API_KEY_LABEL
from inferstack.core.trafficplan import PLAN_KEY, PLAN_LABEL
from inferstack.router.kubesource import KubePlanSource
from inferstack.router.metrics import RouterMetrics
from inferstack.router.plansource import PlanStore

UID = "uid-support-1"


def plan_spec(serial: int, namespace: str = "team-a", stack: str = "support", **extra: Any) -> dict[str, Any]:
    return {
        "stack": stack,
        "namespace": namespace,
        "serial": serial,
        "stable": {"revision": f"rev-{serial}", "url": "http://127.0.0.1:1", "servedModel": "m", "cacheNamespace": "c"},
        **extra,
    }


def owner(stack: str = "support", uid: str = UID, **over: Any) -> list[dict[str, Any]]:
    ref = {"apiVersion": "inferstack.dev/v1alpha1", "kind": "InferenceStack", "name": stack, "uid": uid, "controller": True}
    return [{**ref, **over}]


class Resource:
    """One resource's objects with resourceVersions, watch streams and compaction (410)."""

    def __init__(self, api: FakeKube, kind: str, label: str | None = None) -> None:
        self.api, self.kind, self.label = api, kind, label
        self.oldest = 0  # watches from before this resourceVersion get 410 Gone
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        self.lists = 0
        self.accepts: list[tuple[bool, str]] = []  # (a watch?, Accept)
        self.requests: list[tuple[bool, str | None]] = []  # (a watch?, namespace; None: all namespaces)

    async def put(self, namespace: str, name: str, **fields: Any) -> dict[str, Any]:
        self.api.rv += 1
        old = self.objects.get((namespace, name))
        kind = "MODIFIED" if old else "ADDED"
        # An update keeps the object's UID, as the API server does; a create gets a new one.
        uid = old["metadata"]["uid"] if old else f"uid-{name}-{self.api.rv}"
        meta = {"name": name, "namespace": namespace, "resourceVersion": str(self.api.rv), "uid": uid,
                "labels": {self.label: "true"} if self.label else {}}
        meta.update(fields.pop("metadata", {}))
        obj = {"kind": self.kind, "metadata": meta, **fields}
        self.objects[(namespace, name)] = obj
        self.history.append((self.api.rv, kind, obj))
        await self.api.notify()
        return obj

    async def delete(self, namespace: str, name: str) -> None:
        self.api.rv += 1
        obj = self.objects.pop((namespace, name))
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.api.rv)}}
        self.history.append((self.api.rv, "DELETED", obj))
        await self.api.notify()

    async def compact(self) -> None:
        self.oldest = self.api.rv + 1
        self.history.clear()
        await self.api.notify()

    def _visible(self, obj: dict[str, Any], namespace: str | None, selector: str | None) -> bool:
        if selector:  # "label" or "label=value", as the sources send them
            label, _, value = selector.partition("=")
            labels = obj["metadata"]["labels"]
            if label not in labels or (value and labels[label] != value):
                return False
        return namespace in (None, obj["metadata"]["namespace"])

    async def handle(self, request: web.Request) -> web.StreamResponse:
        api = self.api
        self.accepts.append((request.query.get("watch", "").lower() in ("true", "1"), request.headers.get("Accept", "")))
        self.requests.append((self.accepts[-1][0], request.match_info.get("ns")))
        if api.down:
            return web.json_response({"kind": "Status", "code": 503, "message": "down"}, status=503)
        namespace = request.match_info.get("ns")
        selector = request.query.get("labelSelector")
        if request.query.get("watch", "").lower() not in ("true", "1"):
            self.lists += 1
            items = [o for o in self.objects.values() if self._visible(o, namespace, selector)]
            return web.json_response({"kind": f"{self.kind}List", "metadata": {"resourceVersion": str(api.rv)}, "items": items})
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
        while time.monotonic() < deadline and not api.down and self.oldest == oldest:
            for rv, kind, obj in list(self.history):
                if rv > since and self._visible(obj, namespace, selector):
                    await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
                    since = rv
            async with api.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(api.changed.wait(), timeout=max(0.01, deadline - time.monotonic()))
        return resp


class FakeKube:
    """InferenceStacks, TrafficPlans, labelled ConfigMaps and Secrets in memory, with outages.

    Secrets are twofold: ``secrets`` are read one by one (endpoint tokens, ``get``),
    ``key_secrets`` are listed and watched with their label (API keys).
    """

    def __init__(self) -> None:
        self.rv = 100
        self.changed = asyncio.Condition()
        self.down = False
        self.stacks = Resource(self, "InferenceStack")
        self.plans = Resource(self, "TrafficPlan")
        self.configmaps = Resource(self, "ConfigMap", label=PLAN_LABEL)
        self.key_secrets = Resource(self, "Secret", label=API_KEY_LABEL)
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.raw_secrets: dict[tuple[str, str], dict[str, str]] = {}  # data served as is: not base64, not UTF-8
        self.secret_reads: list[tuple[str, str]] = []

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def set_down(self, down: bool) -> None:
        self.down = down
        await self.notify()

    async def stack(self, name: str = "support", uid: str = UID, namespace: str = "team-a") -> None:
        await self.stacks.put(namespace, name, metadata={"uid": uid})

    async def plan(self, serial: int, name: str = "support-traffic", namespace: str = "team-a",
                   owners: list[dict[str, Any]] | None = None, spec: dict[str, Any] | None = None) -> None:
        await self.plans.put(namespace, name, metadata={"ownerReferences": owner() if owners is None else owners},
                             spec=spec if spec is not None else plan_spec(serial, namespace=namespace))

    async def secret(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        self.secret_reads.append(key)
        if key in self.raw_secrets:
            data = self.raw_secrets[key]
        elif key in self.secrets:
            data = {k: base64.b64encode(v.encode()).decode() for k, v in self.secrets[key].items()}
        else:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        return web.json_response({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": key[1], "namespace": key[0]}, "data": data})


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeKube, str]]:
    kube = FakeKube()
    app = web.Application()
    crd = "/apis/inferstack.dev/v1alpha1"
    for resource, plural in ((kube.stacks, "inferencestacks"), (kube.plans, "trafficplans")):
        app.router.add_get(f"{crd}/namespaces/{{ns}}/{plural}", resource.handle)
        app.router.add_get(f"{crd}/{plural}", resource.handle)
    app.router.add_get("/api/v1/namespaces/{ns}/configmaps", kube.configmaps.handle)
    app.router.add_get("/api/v1/configmaps", kube.configmaps.handle)
    app.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", kube.secret)
    app.router.add_get("/api/v1/namespaces/{ns}/secrets", kube.key_secrets.handle)
    app.router.add_get("/api/v1/secrets", kube.key_secrets.handle)
    async with TestServer(app) as server:
        yield kube, str(server.make_url("")).rstrip("/")


def api_for(url: str) -> Callable[[], client.ApiClient]:
    def make() -> client.ApiClient:
        return client.ApiClient(client.Configuration(host=url))

    return make


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.02)


def source(url: str, metrics: RouterMetrics, **kwargs: Any) -> KubePlanSource:
    kwargs = {"namespace": "team-a", "watch_timeout": 2, "backoff": (0.05, 0.2), "confirm_after": 0.2, **kwargs}
    return KubePlanSource(metrics, api_factory=api_for(url), **kwargs)


@pytest.fixture
async def running(fake) -> AsyncIterator[tuple[FakeKube, PlanStore, RouterMetrics]]:
    kube, url = fake
    metrics, store = RouterMetrics(), PlanStore()
    src = source(url, metrics, legacy_configmaps=True)
    await kube.stack()
    await kube.plan(1)
    await src.start(store)
    await until(lambda: store.get("team-a/support") is not None)
    yield kube, store, metrics
    await src.stop()


def serial(store: PlanStore, key: str = "team-a/support") -> int | None:
    plan = store.get(key)
    return plan.serial if plan else None


def ignored(metrics: RouterMetrics, reason: str) -> float:
    return metrics.registry.get_sample_value("inferstack_router_plans_ignored_total", {"reason": reason}) or 0.0


async def test_watch_applies_updates_and_ignores_older_serials(running) -> None:
    kube, store, _ = running
    await kube.plan(3)
    await until(lambda: serial(store) == 3)
    await kube.plan(2)
    await kube.stack("other", uid="uid-other")
    await kube.plan(1, name="other-traffic", owners=owner("other", "uid-other"), spec=plan_spec(1, stack="other"))  # an event after the stale one
    await until(lambda: store.get("team-a/other") is not None)
    assert serial(store) == 3


async def test_stacks_and_configmaps_are_listed_and_watched_as_metadata_only(running) -> None:
    kube, _, _ = running
    for resource in (kube.stacks, kube.configmaps):
        await until(lambda r=resource: {watching for watching, _ in r.accepts} == {False, True})
        for watching, accept in resource.accepts:
            assert accept.startswith("application/json;as=PartialObjectMetadata" + ("" if watching else "List") + ";")


async def test_malformed_plan_is_rejected_whole_and_last_good_kept(running) -> None:
    kube, store, metrics = running
    await kube.plan(5, spec=plan_spec(5, candidateWeight=50))
    await until(lambda: metrics.registry.get_sample_value(
        "inferstack_router_plan_errors_total", {"source": "team-a/support-traffic"}) == 1)
    assert serial(store) == 1
    assert store.get("team-a/support").candidate_weight == 0


async def test_deleted_plan_removes_the_stack(running) -> None:
    kube, store, _ = running
    await kube.plans.delete("team-a", "support-traffic")
    await until(lambda: len(store) == 0)


async def test_a_plan_deleted_and_created_again_between_two_lists_is_obeyed_with_lower_serials(running) -> None:
    kube, store, _ = running
    await kube.plan(7)
    await until(lambda: serial(store) == 7)
    await kube.set_down(True)  # the watch breaks and misses what follows
    await kube.plans.delete("team-a", "support-traffic")
    await kube.plan(2)  # a new object: the operator's serials start again from what it sees
    await kube.plans.compact()  # the watch's resourceVersion is gone: the source must relist
    await kube.set_down(False)
    await until(lambda: serial(store) == 2)
    await kube.plan(1)  # the same object again: older serials are still ignored
    await kube.plan(3)
    await until(lambda: serial(store) == 3)


async def test_410_gone_relists(running) -> None:
    kube, store, _ = running
    lists = kube.plans.lists
    await kube.plans.compact()  # ends the watch; its resourceVersion is now too old
    await kube.plan(7)
    await until(lambda: serial(store) == 7)
    assert kube.plans.lists > lists


async def test_api_server_outage_keeps_plans_and_recovers(running) -> None:
    kube, store, _ = running
    await kube.set_down(True)
    await asyncio.sleep(0.3)  # several failed retries happen during this window
    assert serial(store) == 1
    await kube.plan(9)
    await kube.set_down(False)
    await until(lambda: serial(store) == 9)


@pytest.mark.parametrize(
    ("owners", "reason"),
    [
        pytest.param([], "no_controller", id="no-owner"),
        pytest.param(owner(controller=False), "no_controller", id="owner-not-controller"),
        pytest.param(owner(uid="uid-guessed"), "uid_mismatch", id="wrong-uid"),
        pytest.param(owner(kind="Deployment", apiVersion="apps/v1"), "wrong_owner", id="owner-not-a-stack"),
    ],
)
async def test_a_forged_plan_is_ignored_counted_and_the_real_plan_keeps_serving(running, owners, reason) -> None:
    kube, store, metrics = running
    # Another object claiming the same stack (the real one is support-traffic)...
    await kube.plan(99, name="support-traffic-x", owners=owners, spec=plan_spec(99))
    await until(lambda: ignored(metrics, "wrong_name") == 1)
    # ...and the real object rewritten by a forger with a higher serial: ignored, the last good plan stays.
    await kube.plan(99, owners=owners)
    await until(lambda: ignored(metrics, reason) == 1)
    assert serial(store) == 1
    await kube.plan(100)  # the operator takes its plan back
    await until(lambda: serial(store) == 100)


async def test_a_plan_naming_another_namespace_is_ignored(running) -> None:
    kube, store, metrics = running
    await kube.plan(50, name="evil-traffic", spec=plan_spec(50, namespace="team-b", stack="evil"), owners=owner("evil"))
    await until(lambda: ignored(metrics, "wrong_namespace") == 1)
    assert [p.key for p in store.plans()] == ["team-a/support"] and serial(store) == 1


async def test_a_stack_deleted_or_created_again_withdraws_its_plan(running) -> None:
    kube, store, metrics = running
    await kube.stacks.delete("team-a", "support")
    await until(lambda: store.get("team-a/support") is None)
    await kube.stack(uid="uid-support-2")  # same name, new object
    await asyncio.sleep(0.4)  # past confirm_after
    assert store.get("team-a/support") is None
    # The old stack's plan is garbage the collector removes, not a forgery: no alarm.
    assert ignored(metrics, "stack_missing") == ignored(metrics, "uid_mismatch") == 0
    # The operator re-owns the plan; a new stack's serials may start lower than the old one's.
    await kube.plan(1, owners=owner(uid="uid-support-2"), spec=plan_spec(1))
    await until(lambda: serial(store) == 1)


async def test_a_forged_version_is_counted_even_when_the_operator_rewrote_it_at_once(running) -> None:
    kube, store, metrics = running
    await kube.plan(500, owners=owner(uid="uid-guessed"))
    await kube.plan(2)  # the operator's next pass, well inside confirm_after
    await until(lambda: serial(store) == 2)
    await until(lambda: ignored(metrics, "uid_mismatch") == 1)


async def test_a_plan_that_arrives_before_its_stack_is_not_an_alarm(running) -> None:
    kube, store, metrics = running
    await kube.plan(1, name="new-traffic", owners=owner("new", "uid-new"), spec=plan_spec(1, stack="new"))
    await asyncio.sleep(0.05)
    await kube.stack("new", uid="uid-new")
    await until(lambda: store.get("team-a/new") is not None)
    await asyncio.sleep(0.4)  # past confirm_after
    assert ignored(metrics, "stack_missing") == 0


async def test_old_plan_configmaps_are_counted_never_obeyed(running) -> None:
    kube, store, metrics = running
    data = {PLAN_KEY: json.dumps(plan_spec(1000))}
    await kube.configmaps.put("team-a", "support-traffic", data=data, metadata={"ownerReferences": owner()})
    await until(lambda: ignored(metrics, "configmap") == 1)
    await kube.configmaps.put("team-a", "support-traffic", data=data)  # a new version counts again
    await until(lambda: ignored(metrics, "configmap") == 2)
    assert serial(store) == 1


async def test_nothing_is_decided_before_stacks_are_listed(fake) -> None:
    kube, url = fake
    metrics, store = RouterMetrics(), PlanStore()
    await kube.plan(1)
    await kube.set_down(True)
    src = source(url, metrics)
    await src.start(store)
    await asyncio.sleep(0.3)
    assert src.plans is not None and not src.plans.stacks_listed and len(store) == 0
    await kube.stack()
    await kube.set_down(False)
    await until(lambda: serial(store) == 1)
    assert sum(ignored(metrics, r) for r in ("stack_missing", "uid_mismatch")) == 0
    await src.stop()


async def test_tokens_come_from_the_plans_namespace_only_for_trusted_plans(fake) -> None:
    kube, url = fake
    metrics, store = RouterMetrics(), PlanStore()
    kube.secrets[("team-a", "hosted-key")] = {"api-key": "sk-real"}
    ref = {"apiKeySecretRef": {"name": "hosted-key", "key": "api-key"}}
    hosted = plan_spec(1)
    hosted["stable"] = {**hosted["stable"], **ref}
    await kube.stack()
    await kube.plan(1, spec=hosted)
    # A plan no stack controls never makes the router read a Secret.
    await kube.plan(1, name="loot-traffic", owners=[], spec={**hosted, "stack": "loot"})
    src = source(url, metrics)
    await src.start(store)
    await until(lambda: serial(store) == 1)
    assert store.get("team-a/support").stable.api_key == "sk-real"
    await until(lambda: ignored(metrics, "no_controller") == 1)
    assert kube.secret_reads == [("team-a", "hosted-key")]
    await src.stop()


async def test_store_dsns_come_from_the_plans_namespace_like_tokens(fake) -> None:
    kube, url = fake
    metrics, store = RouterMetrics(), PlanStore()
    kube.secrets[("team-a", "support-store")] = {"dsn": "postgresql://bot:pw-real@db/docs"}
    retrieval = {"embeddingUrl": "http://embed:8080", "embeddingModel": "bge", "dimension": 8, "index": "docs",
                 "indexVersion": "v1", "storeSecretRef": {"name": "support-store", "key": "dsn"}}
    rag = plan_spec(1)
    rag["stable"] = {**rag["stable"], "retrieval": retrieval}
    await kube.stack()
    await kube.plan(1, spec=rag)
    src = source(url, metrics)
    await src.start(store)
    await until(lambda: serial(store) == 1)
    loaded = store.get("team-a/support").stable.retrieval
    assert loaded is not None and loaded.store_dsn == "postgresql://bot:pw-real@db/docs"
    assert kube.secret_reads == [("team-a", "support-store")]
    await src.stop()


# ------------------------------------------------- secrets through the Kubernetes path

MARKER = "sk-MARKER-kube-5e0b7a21c4"
CLIENT_KEY = "isk_unit-test-key-for-the-kube-path"


def echo_server() -> TestServer:
    """A hosted endpoint (and judge) that fails, echoing the token it was sent: in a 401 as hosted APIs
    do, or with every header and the body in a 500."""

    async def echo_5xx(request: web.Request) -> web.Response:
        return web.json_response({"error": "boom", "headers": dict(request.headers), "body": await request.text()}, status=500)

    async def echo_401(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": f"Incorrect API key: {request.headers.get('Authorization')}"}},
                                 status=401)

    app = web.Application()
    app.router.add_post("/echo5xx/v1/chat/completions", echo_5xx)
    app.router.add_post("/echo401/v1/chat/completions", echo_401)
    return TestServer(app)


async def test_a_marker_token_read_from_secrets_reaches_no_log_and_no_response(fake, stable_server, make_keys, caplog) -> None:
    """_with_secrets through every error path: the Secret read and used (a hosted endpoint and a judge echo
    it back in errors), read into a plan that then fails validation, a Secret without the key, with data that
    is not base64 or not UTF-8, no Secret at all, a token no HTTP header can carry (refused with its plan: else
    each request to the endpoint was a 500), a judge's Secret missing, a store DSN with the token as its password. The marker is in no log line (DEBUG, every logger) and in no
    status line, header or body a client gets."""
    from aiohttp.test_utils import TestClient

    from inferstack.router.app import RouterTestServer, build_app
    from inferstack.router.auth import Authenticator
    from inferstack.router.settings import RouterSettings

    caplog.set_level(logging.DEBUG)
    kube, url = fake
    kube.secrets[("team-a", "token")] = {"token": MARKER, "dsn": f"postgresql://bot:{MARKER}@127.0.0.1:1/docs"}
    kube.secrets[("team-a", "other-key")] = {"unrelated": MARKER}  # the ref's key is not there
    kube.raw_secrets[("team-a", "not-base64")] = {"token": f"!{MARKER}!"}
    kube.raw_secrets[("team-a", "not-utf8")] = {"token": base64.b64encode(b"\xff" + MARKER.encode()).decode()}
    kube.secrets[("team-a", "odd-token")] = {"token": MARKER + "\u20ac\x01"}  # latin-1 cannot carry it in a header
    async with echo_server() as echo:
        echo_url = str(echo.make_url("")).rstrip("/")
        good_url = str(stable_server.make_url("")).rstrip("/")

        def hosted(stack: str, at: str, secret: str = "token", key: str = "token") -> dict[str, Any]:
            spec = plan_spec(1, stack=stack)
            spec["stable"] = {**spec["stable"], "url": at, "apiKeySecretRef": {"name": secret, "key": key}}
            return spec

        def judged(stack: str, secret: str) -> dict[str, Any]:
            spec = plan_spec(1, stack=stack)
            spec["stable"] = {**spec["stable"], "url": good_url, "servedModel": "model-a"}
            judge = {"mode": "Rubric", "endpoint": {"url": f"{echo_url}/echo5xx/v1", "model": "judge",
                                                    "apiKeySecretRef": {"name": secret, "key": "token"}},
                     "criteria": "Helpful answers.", "sampleRate": 1.0, "maxCallsPerMinute": 1000, "timeout": "5s"}
            spec["evaluation"] = {"evaluators": [{"name": "quality", "judge": judge}]}
            return spec

        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: the embedding server refuses
        store_spec = plan_spec(1, stack="rag")
        store_spec["stable"] = {**store_spec["stable"], "url": good_url, "servedModel": "model-a", "retrieval": {
            "embeddingUrl": f"http://127.0.0.1:{closed.getsockname()[1]}", "embeddingModel": "bge", "dimension": 8,
            "index": "docs", "indexVersion": "v1", "storeSecretRef": {"name": "token", "key": "dsn"}}}
        invalid = hosted("invalid", good_url)
        invalid["stable"]["cacheNamespace"] = {"not": "a string"}  # the token is read first, then validation fails
        specs = {
            "echo401": hosted("echo401", f"{echo_url}/echo401"),
            "echo5xx": hosted("echo5xx", f"{echo_url}/echo5xx"),
            "judged": judged("judged", "token"),
            "judge-no-secret": judged("judge-no-secret", "absent"),
            "rag": store_spec,
            "invalid": invalid,
            "odd": hosted("odd", f"{echo_url}/echo401", secret="odd-token"),
            "missing-key": hosted("missing-key", good_url, secret="other-key"),
            "not-base64": hosted("not-base64", good_url, secret="not-base64"),
            "not-utf8": hosted("not-utf8", good_url, secret="not-utf8"),
            "no-secret": hosted("no-secret", good_url, secret="absent"),
        }
        served, refused = list(specs)[:5], list(specs)[5:]
        for name, spec in specs.items():
            await kube.stack(name, uid=f"uid-{name}")
            await kube.plan(1, name=f"{name}-traffic", owners=owner(name, f"uid-{name}"), spec=spec)

        metrics, store = RouterMetrics(), PlanStore()
        auth = Authenticator("api-keys", make_keys((CLIENT_KEY, "team-a", "tests", "*")))
        app = build_app(store, RouterSettings(upstream_timeout=5), sources=[source(url, metrics)], metrics=metrics, auth=auth)
        seen: list[str] = []  # every status line, header and body a client got
        async with TestClient(RouterTestServer(app), headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as client:
            errors = "inferstack_router_plan_errors_total"
            await until(lambda: all(store.get(f"team-a/{n}") is not None for n in served) and all(
                metrics.registry.get_sample_value(errors, {"source": f"team-a/{n}-traffic"}) for n in refused))

            async def call(model: str, **extra: Any) -> int:
                body = {"model": model, "messages": [{"role": "user", "content": "Where is my parcel?"}], **extra}
                async with client.post("/v1/chat/completions", json=body) as resp:
                    seen.append(f"{resp.status} {resp.reason}")
                    seen.extend(f"{k}: {v}" for k, v in resp.headers.items())
                    seen.append(await resp.text())
                    return resp.status

            assert await call("echo401") == 401  # the hosted endpoint's own 401, its quote of the key redacted
            assert await call("echo5xx") == 502
            assert await call("echo5xx", stream=True) == 502
            assert await call("judged") == 200  # answered; its judge then fails on the echoing endpoint
            assert await call("judge-no-secret") == 200  # a judge token that cannot be read is not the plan's fault
            assert await call("rag") >= 500  # the embedding server refuses; the DSN is never used
            for name in refused:
                assert await call(name) == 404, name  # never served: rejected whole
            async with client.get("/v1/models") as resp:
                seen.append(await resp.text())
            # The judge of "judged" called the echoing endpoint with the token and failed (logged at DEBUG).
            await until(lambda: (metrics.registry.get_sample_value("inferstack_eval_errors_total", {
                "namespace": "team-a", "stack": "judged", "revision": "rev-1", "evaluator": "quality", "kind": "http_5xx"})
                or 0) > 0)
        closed.close()

    text = caplog.text
    # The failures were logged, with what failed, just never the token.
    # Missing key, not base64, not UTF-8, no Secret (its status only, not the API server's answer), odd token.
    assert text.count("cannot read an endpoint token or store DSN") == 5, text
    assert "HTTP 404 Not Found" in text and "HTTP response body" not in text and "no token an HTTP header can carry" in text
    assert text.count("rejected TrafficPlan") == 6 and "cannot read judge quality's token: HTTP 404" in text
    assert "<redacted>" in text  # the echoed Authorization header, in the 5xx's logged detail
    encoded = base64.b64encode(MARKER.encode()).decode()
    leaked = [line for line in text.splitlines() if MARKER in line or encoded in line]
    assert not leaked, leaked
    leaked = [line for line in seen if MARKER in line or encoded in line]
    assert not leaked, leaked
