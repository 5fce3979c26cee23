"""Plans only the operator can write: attacks on the real control plane.

Each test deploys a stack, waits until the router serves it from the
operator's TrafficPlan, then plays an attacker who tries to take its traffic:
a tiny local HTTP server is the attacker's endpoint, and the forged plans
point there with a higher serial and the namespace's API-key Secret as their
bearer token. The router must keep answering from the real backend with the
same ``x-inferstack-revision``, the attacker's server must never see a
request, and the router must count what it ignored in
``inferstack_router_plans_ignored_total{reason}``.

(a) a ConfigMap with the old plan label, written by an ordinary namespace user;
(b) TrafficPlans written by hand (by an admin: users cannot): the real one
    overwritten without an owner or with a guessed owner UID, and a new one;
(c) an ordinary namespace user (the built-in ``edit`` role, which the chart's
    aggregated ClusterRoles extend) may create InferenceStacks but not create
    or patch TrafficPlans;
(d) an InferenceStack whose ``apiKeySecretRef`` names a namespace is refused.
And the upgrade path: the plan ConfigMap an older operator wrote for the stack
is deleted once the TrafficPlan exists; one it does not own stays.
"""

from __future__ import annotations

import copy
import http.server
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PREFIX, REPO, kget, kubectl, scrape, wait_until

from dataplane import DataPlane, free_port
from scenario import GOOD_PROMPT, support_stack

HELM_DIRS = sorted(Path.home().glob(".cache/inferstack/bin/*/helm"))


class Attacker:
    """The attacker's endpoint: an HTTP server on loopback that records every request it gets."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []  # (path, authorization header)
        seen = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                seen.append((self.path, self.headers.get("Authorization", "")))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"choices": [{"message": {"role": "assistant", "content": "pwned"}}]}')

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def attacker() -> Iterator[Attacker]:
    a = Attacker()
    yield a
    a.stop()


# ------------------------------------------------------------------ helpers


def apply(manifest: dict, namespace: str, *extra: str) -> None:
    kubectl("apply", "-n", namespace, *extra, "-f", "-", input=json.dumps(manifest))


def ask(dp: DataPlane, namespace: str, stack: str) -> tuple[int, dict[str, str]]:
    body = json.dumps({"model": f"{namespace}/{stack}", "messages": [{"role": "user", "content": "Where is my parcel?"}]}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {dp.key_for(namespace)}", "x-user-id": "u1"}
    req = urllib.request.Request(f"{dp.router_url}/v1/chat/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            return r.status, {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, {}


def ignored(dp: DataPlane, reason: str) -> float:
    metrics = scrape(f"{dp.router_metrics_url}/metrics")
    return metrics.get(("inferstack_router_plans_ignored_total", frozenset({("reason", reason)})), 0.0)


def deploy(dp: DataPlane, namespace: str, name: str = "shop") -> tuple[str, str]:
    """The stack Ready and served by the router: (its UID, the revision the router answers with)."""
    apply(support_stack(name, GOOD_PROMPT), namespace)
    kubectl("wait", "-n", namespace, "--for=condition=Ready", f"istack/{name}", "--timeout=150s")
    wait_until("the router to serve the stack", lambda: dp.serves(f"{namespace}/{name}"), timeout=30)
    _, headers = wait_until("an answer", lambda: (r := ask(dp, namespace, name))[0] == 200 and r, timeout=30)
    uid = kget("istack", name, namespace)["metadata"]["uid"]
    return uid, headers["x-inferstack-revision"]


def forged_plan(namespace: str, stack: str, attacker: Attacker, serial: int = 1_000_000) -> dict[str, Any]:
    """A plan that sends every user to the attacker, with the namespace's API-key Secret as bearer token."""
    bundle = {
        "revision": "pwned", "url": attacker.url, "servedModel": "x", "cacheNamespace": "pwned",
        "apiKeySecretRef": {"name": "e2e-client", "key": "sha256"},
    }  # fmt: skip
    return {"stack": stack, "namespace": namespace, "serial": serial, "stable": bundle}


def still_served_by_the_real_plan(dp: DataPlane, namespace: str, revision: str, attacker: Attacker, n: int = 20) -> None:
    for _ in range(n):
        status, headers = ask(dp, namespace, "shop")
        assert status == 200 and headers["x-inferstack-revision"] == revision, (status, headers)
    assert attacker.requests == [], "the attacker's endpoint got a request"


def trafficplan_owner_uid(namespace: str, name: str = "shop-traffic") -> str | None:
    obj = kget("trafficplan", name, namespace) or {}
    refs = [r for r in obj.get("metadata", {}).get("ownerReferences") or [] if r.get("controller")]
    return refs[0]["uid"] if refs else None


# --------------------------------------------------------------------- users


@pytest.fixture(scope="module")
def aggregated_roles() -> Iterator[None]:
    """The chart's aggregated ClusterRoles, rendered by helm (or the same rules written here when no helm is built)."""
    release = f"{PREFIX}-forgery"
    helm = os.environ.get("INFERSTACK_HELM") or (str(HELM_DIRS[-1]) if HELM_DIRS else None)
    if helm:
        import subprocess

        rendered = subprocess.run(
            [helm, "template", release, str(REPO / "charts/inferstack"), "--kube-version", "1.34.0",
             "--show-only", "templates/aggregate-roles.yaml"],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout  # fmt: skip
    else:
        rules = {
            "edit": ([("inferencestacks", ["get", "list", "watch", "create", "update", "patch", "delete"]),
                      ("inferencestacks/status", ["get", "list", "watch"]), ("trafficplans", ["get", "list", "watch"])],
                     {"rbac.authorization.k8s.io/aggregate-to-edit": "true", "rbac.authorization.k8s.io/aggregate-to-admin": "true"}),
            "view": ([("inferencestacks", ["get", "list", "watch"]), ("inferencestacks/status", ["get", "list", "watch"]),
                      ("trafficplans", ["get", "list", "watch"])], {"rbac.authorization.k8s.io/aggregate-to-view": "true"}),
        }  # fmt: skip
        rendered = "\n---\n".join(
            json.dumps({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                        "metadata": {"name": f"{release}-inferstack-{role}", "labels": labels},
                        "rules": [{"apiGroups": ["inferstack.dev"], "resources": [r], "verbs": v} for r, v in rs]})
            for role, (rs, labels) in rules.items()
        )  # fmt: skip
    kubectl("apply", "-f", "-", input=rendered)
    yield
    kubectl("delete", "clusterrole", f"{release}-inferstack-edit", f"{release}-inferstack-view", "--ignore-not-found")


def namespace_user(namespace: str) -> str:
    """A ServiceAccount bound to the built-in edit role in the namespace: an ordinary namespace user."""
    kubectl("create", "serviceaccount", "dev", "-n", namespace)
    kubectl("create", "rolebinding", "dev-edit", "--clusterrole=edit", "--serviceaccount", f"{namespace}:dev", "-n", namespace)
    user = f"system:serviceaccount:{namespace}:dev"
    # kube-controller-manager aggregates the chart's role into edit: wait until it has.
    can = ("auth", "can-i", "create", "inferencestacks.inferstack.dev", "-n", namespace, f"--as={user}")
    wait_until("edit to include inferencestacks", lambda: kubectl(*can, check=False).stdout.strip() == "yes", timeout=30)
    return user


# --------------------------------------------------------------------- tests


def test_a_forged_plan_configmap_is_ignored_and_the_real_plan_keeps_serving(dataplane, namespace, attacker, aggregated_roles):
    uid, revision = deploy(dataplane, namespace)
    user = namespace_user(namespace)
    before = ignored(dataplane, "configmap")
    # What any user with ConfigMap write could do before: the old plan label, a higher serial, the attacker's URL.
    forged = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "shop-traffic", "labels": {"inferstack.dev/traffic-plan": "true", "inferstack.dev/stack": "shop"}},
        "data": {"plan.json": json.dumps(forged_plan(namespace, "shop", attacker))},
    }  # fmt: skip
    apply(forged, namespace, f"--as={user}")  # allowed: edit grants ConfigMaps
    wait_until("the router to count the forged ConfigMap", lambda: ignored(dataplane, "configmap") >= before + 1, timeout=30)
    still_served_by_the_real_plan(dataplane, namespace, revision, attacker)
    # The operator deletes only plan ConfigMaps its stack owns: this one stays, and stays harmless.
    assert kget("configmap", "shop-traffic", namespace) is not None
    assert trafficplan_owner_uid(namespace) == uid


@pytest.mark.parametrize(
    ("owners", "reason"),
    [
        pytest.param([], "no_controller", id="no-owner"),
        pytest.param([{"apiVersion": "inferstack.dev/v1alpha1", "kind": "InferenceStack", "name": "shop",
                       "uid": "00000000-0000-0000-0000-000000000000", "controller": True}], "uid_mismatch", id="wrong-uid"),
    ],
)  # fmt: skip
def test_a_trafficplan_written_by_hand_is_ignored(dataplane, namespace, attacker, owners, reason):
    uid, revision = deploy(dataplane, namespace)
    plan_uid = kget("trafficplan", "shop-traffic", namespace)["metadata"]["uid"]
    before = ignored(dataplane, reason)
    # The operator's own object, rewritten by hand (an admin: ordinary users cannot, see the next test).
    patch = {"metadata": {"ownerReferences": owners}, "spec": forged_plan(namespace, "shop", attacker)}
    kubectl("patch", "trafficplan", "shop-traffic", "-n", namespace, "--type=merge", "-p", json.dumps(patch))
    wait_until(f"the router to count the hand-written plan ({reason})", lambda: ignored(dataplane, reason) >= before + 1, timeout=30)
    # A controller reference whose UID names no live object is dangling: the garbage
    # collector may delete the forged plan before the operator rewrites it, and the router
    # then serves nothing for the stack until the operator has written it anew. Without a
    # controller the collector leaves the object alone and the real plan serves throughout.
    if reason != "uid_mismatch":
        still_served_by_the_real_plan(dataplane, namespace, revision, attacker)
    # The operator takes its plan back: its owner and its bundle.
    restored = wait_until("the operator to rewrite its plan", lambda: trafficplan_owner_uid(namespace) == uid and kget("trafficplan", "shop-traffic", namespace), timeout=30)
    if restored["metadata"]["uid"] == plan_uid:  # rewritten in place: with a serial above the forger's
        assert restored["spec"]["serial"] > 1_000_000
    else:  # deleted by the collector and created anew: a new object, whose serials start again
        assert reason == "uid_mismatch"
    assert restored["spec"]["stable"]["revision"] == revision
    assert "apiKeySecretRef" not in restored["spec"]["stable"], "the whole plan is the operator's again, not just its fields"
    wait_until("the router to serve the stack", lambda: dataplane.serves(f"{namespace}/shop"), timeout=30)
    still_served_by_the_real_plan(dataplane, namespace, revision, attacker, n=5)

    # A new TrafficPlan for a stack that does not exist: nothing to obey, nothing served.
    before = ignored(dataplane, "no_controller")
    ghost = {"apiVersion": "inferstack.dev/v1alpha1", "kind": "TrafficPlan", "metadata": {"name": "ghost-traffic"},
             "spec": forged_plan(namespace, "ghost", attacker)}  # fmt: skip
    apply(ghost, namespace)
    wait_until("the router to count the ghost plan", lambda: ignored(dataplane, "no_controller") >= before + 1, timeout=30)
    assert ask(dataplane, namespace, "ghost")[0] == 404
    assert attacker.requests == []


def test_an_ordinary_namespace_user_cannot_write_a_trafficplan(dataplane, namespace, aggregated_roles, attacker):
    deploy(dataplane, namespace)
    user = namespace_user(namespace)
    plan = {"apiVersion": "inferstack.dev/v1alpha1", "kind": "TrafficPlan", "metadata": {"name": "loot-traffic", "namespace": namespace},
            "spec": forged_plan(namespace, "loot", attacker)}  # fmt: skip
    created = kubectl("create", "-f", "-", f"--as={user}", input=json.dumps(plan), check=False)
    assert created.returncode != 0 and "Forbidden" in created.stderr and "trafficplans" in created.stderr, created.stderr
    patched = kubectl("patch", "trafficplan", "shop-traffic", "-n", namespace, f"--as={user}", "--type=merge",
                      "-p", json.dumps({"spec": {"serial": 2_000_000}}), check=False)  # fmt: skip
    assert patched.returncode != 0 and "Forbidden" in patched.stderr, patched.stderr
    deleted = kubectl("delete", "trafficplan", "shop-traffic", "-n", namespace, f"--as={user}", check=False)
    assert deleted.returncode != 0 and "Forbidden" in deleted.stderr, deleted.stderr
    # Reading plans is allowed (view), and so is everything a stack owner does.
    assert kubectl("get", "trafficplan", "shop-traffic", "-n", namespace, f"--as={user}", check=False).returncode == 0
    mine = copy.deepcopy(support_stack("mine", GOOD_PROMPT))
    kubectl("create", "-n", namespace, f"--as={user}", "-f", "-", input=json.dumps(mine))
    kubectl("patch", "istack", "mine", "-n", namespace, f"--as={user}", "--type=merge", "-p", '{"spec": {"replicas": 1}}')
    kubectl("delete", "istack", "mine", "-n", namespace, f"--as={user}")


def test_a_stack_cannot_name_a_secret_in_another_namespace(namespace):
    hosted = {
        "apiVersion": "inferstack.dev/v1alpha1", "kind": "InferenceStack", "metadata": {"name": "hosted"},
        "spec": {
            "model": {"name": "m", "gpus": 0, "endpoint": {
                "url": "https://llm.example.com/v1",
                "apiKeySecretRef": {"name": "openai", "key": "api-key", "namespace": "kube-system"}}},
            "prompt": {"version": "v1", "system": "s"},
        },
    }  # fmt: skip
    refused = kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(hosted), check=False)
    assert refused.returncode != 0, refused.stdout
    assert 'unknown field "spec.model.endpoint.apiKeySecretRef.namespace"' in refused.stderr, refused.stderr
    # Without strict validation the API server drops the field: it is never stored, so nothing can honour it.
    kubectl("create", "-n", namespace, "--validate=false", "-f", "-", input=json.dumps(hosted))
    stored = kget("istack", "hosted", namespace)["spec"]["model"]["endpoint"]["apiKeySecretRef"]
    assert stored == {"name": "openai", "key": "api-key"}


def test_the_operator_deletes_its_own_old_plan_configmap_and_no_other(dataplane, namespace):
    uid, revision = deploy(dataplane, namespace)
    labels = {"inferstack.dev/traffic-plan": "true", "inferstack.dev/stack": "shop", "app.kubernetes.io/managed-by": "inferstack",
              "inferstack.dev/component": "traffic-plan"}  # fmt: skip
    old_plan = json.dumps({**kget("trafficplan", "shop-traffic", namespace)["spec"], "serial": 7})
    owner = {"apiVersion": "inferstack.dev/v1alpha1", "kind": "InferenceStack", "name": "shop", "uid": uid, "controller": True}
    # What the previous release's operator left: its labels, the stack as controller.
    ours = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shop-traffic", "labels": labels, "ownerReferences": [owner]},
            "data": {"plan.json": old_plan}}  # fmt: skip
    # The same labels on a ConfigMap the stack does not own: not the operator's to delete.
    theirs = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shop-traffic-copy", "labels": labels},
              "data": {"plan.json": old_plan}}  # fmt: skip
    apply(ours, namespace)
    apply(theirs, namespace)
    wait_until("the operator to delete its old plan ConfigMap", lambda: kget("configmap", "shop-traffic", namespace) is None, timeout=30)
    assert kget("configmap", "shop-traffic-copy", namespace) is not None
    assert trafficplan_owner_uid(namespace) == uid
    assert ask(dataplane, namespace, "shop")[1].get("x-inferstack-revision") == revision
