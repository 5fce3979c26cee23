"""Notifications on the real control plane: a real local HTTP receiver gets one POST per decision.

The stack's webhook URL and token come from Secrets of its namespace. A good
candidate is promoted and a candidate that fails billing is rolled back (the
router, stand-in and Prometheus of the e2e data plane measure them); each
makes exactly one POST, with the stack, the revisions and, for the rollback,
the failing gate, slice and values.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import kget, kubectl, wait_until

from dataplane import Load
from scenario import BAD_PROMPT, BETTER_PROMPT, GOOD_PROMPT, support_stack, with_prompt

TOKEN = "e2e-notification-token"


class Receiver:
    """A webhook on loopback recording every POST (path, Authorization, JSON body)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.posts.append((self.path, self.headers.get("Authorization", ""), json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/e2e"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def secret(namespace: str, name: str, data: dict[str, str]) -> None:
    manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}  # fmt: skip
    kubectl("apply", "-f", "-", input=json.dumps(manifest))


def apply(namespace: str, manifest: dict) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def status(namespace: str) -> dict:
    return (kget("istack", "shop", namespace) or {}).get("status", {})


def test_a_promotion_and_a_rollback_each_post_once(dataplane, namespace):
    with Receiver() as hook:
        secret(namespace, "shop-webhook", {"url": hook.url})
        secret(namespace, "shop-webhook-token", {"token": TOKEN})
        manifest = support_stack("shop", GOOD_PROMPT)
        manifest["spec"]["notifications"] = {"webhooks": [{
            "name": "team", "urlSecretRef": {"name": "shop-webhook", "key": "url"},
            "tokenSecretRef": {"name": "shop-webhook-token", "key": "token"},
        }]}  # fmt: skip
        apply(namespace, manifest)
        kubectl("wait", "-n", namespace, "--for=condition=Ready", "istack/shop", "--timeout=60s")
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
        time.sleep(3)  # a duplicate would come within a few passes (resync 1 s)
        final = status(namespace)

    assert [p[2]["kind"] for p in hook.posts] == ["Promoted", "RolledBack"], hook.posts
    assert all(path == "/hooks/e2e" and auth == f"Bearer {TOKEN}" for path, auth, _ in hook.posts)
    promoted, rolled_back = (p[2] for p in hook.posts)
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
