"""Notifications on the real control plane: real local HTTP receivers get one POST per decision.

Two receivers on loopback: the stacks' own webhook (its URL and token from
Secrets of the stack's namespace) and a cluster-wide one from the operator's
configuration (its URL from a Secret of another namespace; events RolledBack,
Stuck and AwaitingPromotion only). The module's operator runs with that
configuration and a 2 s backoff.

* A good candidate is promoted and one that fails billing is rolled back (the
  router, stand-in and Prometheus of the e2e data plane measure them): one
  POST each to the stack's webhook, with the stack, the revisions and, for the
  rollback, the failing gate, slice and values; the cluster's gets the
  rollback only, with the same id.
* A pause step without duration posts AwaitingPromotion; a candidate whose
  pods cannot be scheduled posts Stuck when it is rolled back at the progress
  deadline, and so does a first revision that never comes up. The cluster's
  receiver answers 503 to the first POST of AwaitingPromotion: the operator
  retries after the backoff, and that notification arrives exactly once more.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml
from conftest import NS_GLOB, PREFIX, kget, kubectl, scrape, wait_until

from dataplane import DataPlane, Load
from scenario import BAD_PROMPT, BETTER_PROMPT, GOOD_PROMPT, support_stack, with_prompt

TOKEN = "e2e-notification-token"
CLUSTER_EVENTS = ["RolledBack", "Stuck", "AwaitingPromotion"]
BACKOFF_SECONDS = 2.0
NOWHERE = {"inferstack.dev/no-such-node": "true"}  # pods that no node can take: Pending for ever


@dataclass(frozen=True)
class Post:
    path: str
    authorization: str
    body: dict
    status: int  # what the receiver answered
    at: float  # time.monotonic() when it arrived


class Receiver:
    """A webhook on loopback recording every POST; it answers 503 to the first POST of each
    notification whose kind is in ``fail_once`` (a receiver briefly down), 204 otherwise."""

    def __init__(self, path: str) -> None:
        self.posts: list[Post] = []
        self.fail_once: set[str] = set()
        failed: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                status = 204
                if body.get("kind") in outer.fail_once and body.get("id") not in failed:
                    failed.add(body.get("id"))
                    status = 503
                outer.posts.append(Post(self.path, self.headers.get("Authorization", ""), body, status, time.monotonic()))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def of(self, namespace: str, stack: str | None = None) -> list[Post]:
        return [p for p in self.posts if p.body["namespace"] == namespace and stack in (None, p.body["stack"])]

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class NotifyingDataPlane(DataPlane):
    """The e2e data plane whose operator also has cluster-wide notification settings."""

    notifications: dict[str, Any] = field(default_factory=dict)

    def operator_config(self):
        path = super().operator_config()
        config = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump({**config, "notifications": self.notifications}))
        return path


@pytest.fixture(scope="module")
def cluster_hook():
    with Receiver("/hooks/cluster") as hook:
        yield hook


@pytest.fixture(scope="module")
def dataplane(tmp_path_factory, cluster_hook):
    """This module's data plane: its operator posts to ``cluster_hook`` for every stack, the URL
    read from a Secret in a namespace of its own (as the operator's namespace would hold it)."""
    hooks_ns = f"{PREFIX}-hooks-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", hooks_ns)
    secret(hooks_ns, "sre-webhook", {"url": cluster_hook.url})
    notifications = {
        "webhooks": [{"name": "sre", "urlSecretRef": {"namespace": hooks_ns, "name": "sre-webhook", "key": "url"}, "events": CLUSTER_EVENTS}],
        "backoffSeconds": BACKOFF_SECONDS,
        "maxAttempts": 3,
    }
    dp = NotifyingDataPlane(tmp_path_factory.mktemp("dataplane"), namespace=NS_GLOB, notifications=notifications)
    dp.start()
    yield dp
    dp.stop()
    kubectl("delete", "namespace", hooks_ns, "--wait=false", check=False)


def secret(namespace: str, name: str, data: dict[str, str]) -> None:
    manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}  # fmt: skip
    kubectl("apply", "-f", "-", input=json.dumps(manifest))


def apply(namespace: str, manifest: dict) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def status(namespace: str, name: str = "shop") -> dict:
    return (kget("istack", name, namespace) or {}).get("status", {})


def command(namespace: str, name: str, verb: str) -> None:
    kubectl("annotate", "-n", namespace, "istack", name, "--overwrite", f"inferstack.dev/command={verb}", f"inferstack.dev/command-id={uuid.uuid4().hex}")


def stack_webhooks() -> dict:
    return {"webhooks": [{
        "name": "team", "urlSecretRef": {"name": "shop-webhook", "key": "url"},
        "tokenSecretRef": {"name": "shop-webhook-token", "key": "token"},
    }]}  # fmt: skip


def test_a_promotion_and_a_rollback_each_post_once(dataplane, cluster_hook, namespace):
    with Receiver("/hooks/e2e") as hook:
        secret(namespace, "shop-webhook", {"url": hook.url})
        secret(namespace, "shop-webhook-token", {"token": TOKEN})
        manifest = support_stack("shop", GOOD_PROMPT)
        manifest["spec"]["notifications"] = stack_webhooks()
        apply(namespace, manifest)
        kubectl("wait", "-n", namespace, "--for=condition=Ready", "istack/shop", "--timeout=150s")
        stable = status(namespace)["stableRevision"]
        wait_until("router serves the stack", lambda: dataplane.serves(f"{namespace}/shop"), timeout=30)
        with Load(dataplane.router_url, f"{namespace}/shop", api_key=dataplane.key_for(namespace)):
            apply(namespace, with_prompt(manifest, BETTER_PROMPT))
            good = wait_until("candidate", lambda: status(namespace).get("candidateRevision"))
            wait_until("promotion", lambda: status(namespace).get("stableRevision") == good, timeout=120)
            wait_until("the promotion's POST", lambda: hook.posts, timeout=30)

            apply(namespace, with_prompt(manifest, BAD_PROMPT))
            bad = wait_until("bad candidate", lambda: (c := status(namespace).get("candidateRevision")) != good and c)
            wait_until("rollback", lambda: status(namespace).get("phase") == "Degraded", timeout=120)
            wait_until("the rollback's POST", lambda: len(hook.posts) >= 2, timeout=30)
            wait_until("the rollback's POST to the cluster's webhook", lambda: cluster_hook.of(namespace), timeout=30)
        time.sleep(3)  # a duplicate would come within a few passes (resync 1 s)
        final = status(namespace)

    assert [p.body["kind"] for p in hook.posts] == ["Promoted", "RolledBack"], hook.posts
    assert all(p.path == "/hooks/e2e" and p.authorization == f"Bearer {TOKEN}" for p in hook.posts)
    promoted, rolled_back = (p.body for p in hook.posts)
    assert (promoted["namespace"], promoted["stack"]) == (namespace, "shop")
    assert (promoted["revision"], promoted["stableRevision"], promoted["previousStableRevision"]) == (good, good, stable)
    assert "promoted" in promoted["text"] and good in promoted["text"]

    assert (rolled_back["revision"], rolled_back["stableRevision"], rolled_back["reason"]) == (bad, good, "GateFailed")
    gate = rolled_back["gate"]
    # The gate, slice and values the status shows for the failing evaluation.
    shown = next(g for g in final["gates"] if g["gate"] == gate["name"] and g["slice"] == gate["slice"])
    assert gate["name"] == "answer-quality" and gate["slice"] == "billing" and shown["verdict"] == "Fail"
    assert (gate["value"], gate["baseline"], gate["threshold"]) == (shown["value"], shown["baseline"], shown["threshold"])
    assert "answer-quality" in rolled_back["text"] and "billing" in rolled_back["text"]
    assert promoted["id"] != rolled_back["id"]

    # The cluster-wide webhook takes RolledBack, not Promoted: the same notification, no token.
    assert [(p.path, p.authorization, p.body) for p in cluster_hook.of(namespace)] == [("/hooks/cluster", "", rolled_back)]


def test_b_a_pause_step_and_missed_progress_deadlines_post_awaiting_promotion_and_stuck(dataplane, cluster_hook, namespace):
    cluster_hook.fail_once = {"AwaitingPromotion"}
    with Receiver("/hooks/e2e") as hook:
        secret(namespace, "shop-webhook", {"url": hook.url})
        secret(namespace, "shop-webhook-token", {"token": TOKEN})
        # A first revision whose pods no node takes: Stuck at its progress deadline, no stable revision.
        stuck = support_stack("stuck", GOOD_PROMPT, gates=[], progressDeadline="8s")
        stuck["spec"]["model"]["nodeSelector"] = NOWHERE
        stuck["spec"]["notifications"] = stack_webhooks()
        apply(namespace, stuck)
        # No gates: the steps' timers and the human decide. The pause step has no duration.
        steps = [{"canary": {"weight": 25, "duration": "3s"}}, {"pause": {}}, {"canary": {"weight": 50, "duration": "3s"}}]
        manifest = support_stack("shop", GOOD_PROMPT, gates=[], steps=steps, progressDeadline="15s")
        manifest["spec"]["notifications"] = stack_webhooks()
        apply(namespace, manifest)
        kubectl("wait", "-n", namespace, "--for=condition=Ready", "istack/shop", "--timeout=150s")
        stable = status(namespace)["stableRevision"]

        apply(namespace, with_prompt(manifest, BETTER_PROMPT))
        paused = wait_until("candidate", lambda: status(namespace).get("candidateRevision"))
        wait_until("the pause step", lambda: (s := status(namespace)).get("phase") == "Paused" and (s.get("rollout") or {}).get("stepIndex") == 1, timeout=60)
        wait_until("AwaitingPromotion posted", lambda: hook.of(namespace, "shop"), timeout=30)
        time.sleep(3)  # it stays paused, and says so once
        assert status(namespace).get("stableRevision") == stable
        command(namespace, "shop", "promote")
        wait_until("promotion", lambda: status(namespace).get("stableRevision") == paused, timeout=60)

        never = with_prompt(manifest, BETTER_PROMPT + " Be brief.")
        never["spec"]["model"]["nodeSelector"] = NOWHERE
        apply(namespace, never)
        unscheduled = wait_until("candidate", lambda: (c := status(namespace).get("candidateRevision")) != paused and c)
        wait_until("rollback at the deadline", lambda: status(namespace).get("phase") == "Degraded", timeout=90)
        wait_until("the first revision stuck", lambda: status(namespace, "stuck").get("phase") == "Failed", timeout=60)
        want = {"shop": ["AwaitingPromotion", "Promoted", "Stuck"], "stuck": ["Stuck"]}

        def delivered() -> bool:
            got = {name: [p.body["kind"] for p in hook.of(namespace, name)] for name in want}
            return got == want and len([p for p in cluster_hook.of(namespace) if p.status == 204]) == 3

        wait_until("every POST", delivered, timeout=30)
        time.sleep(2 * BACKOFF_SECONDS + 2)  # a duplicate, or a third attempt, would come by now
        final, first = status(namespace), status(namespace, "stuck")

    # The stack's webhook: one POST per decision, in order.
    for name, kinds in want.items():
        assert [p.body["kind"] for p in hook.of(namespace, name)] == kinds, hook.posts
    assert all(p.authorization == f"Bearer {TOKEN}" and p.status == 204 for p in hook.posts)
    awaiting, promoted, rolled_back = (p.body for p in hook.of(namespace, "shop"))
    assert (awaiting["revision"], awaiting["stableRevision"], awaiting["reason"]) == (paused, stable, "PauseStep")
    assert awaiting["step"] == "step 2/3 (pause)"
    assert f"kubectl istack promote shop -n {namespace}" in awaiting["text"]
    assert (promoted["revision"], promoted["previousStableRevision"]) == (paused, stable)
    assert (rolled_back["kind"], rolled_back["reason"]) == ("Stuck", "ProgressDeadlineExceeded")
    assert (rolled_back["revision"], rolled_back["stableRevision"]) == (unscheduled, paused)
    assert final["rolledBackRevision"] == unscheduled and "gate" not in rolled_back
    (never_up,) = (p.body for p in hook.of(namespace, "stuck"))
    assert (never_up["kind"], never_up["reason"], never_up["stableRevision"]) == ("Stuck", "ProgressDeadlineExceeded", None)
    assert never_up["revision"] and "stuck" in never_up["text"] and first["phase"] == "Failed"

    # The cluster-wide webhook: the same notifications but Promoted (not in its events).
    # AwaitingPromotion was answered 503 once, then delivered by exactly one more attempt,
    # a backoff later; the others went through at the first.
    posts = cluster_hook.of(namespace)
    assert all(p.path == "/hooks/cluster" and p.authorization == "" for p in posts)
    assert Counter(p.body["id"] for p in posts) == {awaiting["id"]: 2, rolled_back["id"]: 1, never_up["id"]: 1}, posts
    retried = [p for p in posts if p.body["id"] == awaiting["id"]]
    assert [p.status for p in retried] == [503, 204] and retried[0].body == retried[1].body == awaiting
    assert retried[1].at - retried[0].at >= BACKOFF_SECONDS, retried
    metrics = scrape(f"http://127.0.0.1:{dataplane.operator_metrics_port}/metrics")

    def count(name: str, **labels: str) -> float:
        return sum(v for (n, ls), v in metrics.items() if n == name and set(labels.items()) <= ls)

    assert count("inferstack_operator_notifications_total", kind="AwaitingPromotion", result="retried") == 1
    assert count("inferstack_operator_notifications_total", kind="AwaitingPromotion", result="delivered") == 2  # stack + cluster
    assert count("inferstack_operator_notifications_dropped_total") == 0
    print("\nretry after a 503:", json.dumps({"backoff (s)": BACKOFF_SECONDS, "503 -> second attempt (s)": round(retried[1].at - retried[0].at, 2)}))
