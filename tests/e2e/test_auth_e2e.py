"""Client authentication on the real control plane, played by the attacker.

Two namespaces each with a stack "shop"; keys are key Secrets made as a user
makes them (hash, tenant, stacks), watched by the router through the real API
server. A key of another namespace gets the same 404 as a stack that does not
exist (docs/router.md, "Authentication").
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import Any

from conftest import PREFIX, kubectl, scrape, wait_until

from dataplane import create_api_key, key_accepted
from scenario import GOOD_PROMPT, support_stack

CACHEABLE = {"messages": [{"role": "user", "content": "Where is my parcel?"}], "temperature": 0, "max_tokens": 32}


def call(url: str, method: str = "GET", body: dict | None = None, **headers: str) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = raw.decode(errors="replace")
        return e.code, dict(e.headers), payload


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def deploy_shop(namespace: str) -> None:
    manifest = support_stack("shop", GOOD_PROMPT)
    manifest["spec"]["cache"] = {"responseCache": {"enabled": True, "ttl": "5m"}}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "istack/shop", "--timeout=150s")


def test_keys_tenants_and_ports_on_the_real_control_plane(dataplane, namespace):
    other = f"{PREFIX}-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", other)
    try:
        deploy_shop(namespace)
        deploy_shop(other)
        router, chat = dataplane.router_url, f"{dataplane.router_url}/v1/chat/completions"
        key_a, key_b = dataplane.key_for(namespace), dataplane.key_for(other)
        globex = create_api_key(namespace, name="globex", tenant="globex")
        only_billing = create_api_key(namespace, name="only-billing", tenant="acme", stacks="billing")
        for key in (globex, only_billing):
            wait_until("the router knows the new key", lambda key=key: key_accepted(router, key), timeout=30)
        wait_until("the router serves both stacks", lambda: dataplane.serves(f"{namespace}/shop") and dataplane.serves(f"{other}/shop"))

        # No key, a guessed key, a key in the wrong scheme: 401, OpenAI-shaped, with WWW-Authenticate.
        for headers in ({}, bearer("isk_" + "A" * 43), {"Authorization": f"Basic {key_a}"}):
            status, resp_headers, body = call(chat, "POST", {**CACHEABLE, "model": f"{namespace}/shop"}, **headers)
            assert status == 401, (headers.keys(), status, body)
            assert body["error"]["code"] == "invalid_api_key" and body["error"]["type"] == "invalid_request_error"
            assert resp_headers["WWW-Authenticate"] == "Bearer"

        # Another namespace's key: the stack is as unknown as one that does not exist.
        there = call(chat, "POST", {**CACHEABLE, "model": f"{namespace}/shop"}, **bearer(key_b))
        nowhere = call(chat, "POST", {**CACHEABLE, "model": f"{namespace}/nope"}, **bearer(key_b))
        assert there[0] == nowhere[0] == 404
        assert there[2]["error"]["code"] == nowhere[2]["error"]["code"] == "model_not_found"
        assert call(chat, "POST", {**CACHEABLE, "model": "shop"}, **bearer(key_b))[1]["x-inferstack-stack"] == f"{other}/shop"

        # A key of the namespace that does not list the stack: 403.
        status, _, body = call(chat, "POST", {**CACHEABLE, "model": "shop"}, **bearer(only_billing))
        assert status == 403 and body["error"]["code"] == "model_not_allowed"

        # /v1/models per key.
        def models(key: str) -> list[str]:
            status, _, body = call(f"{router}/v1/models", **bearer(key))
            assert status == 200
            return [m["root"] for m in body["data"] if m["root"].startswith(PREFIX)]

        assert models(key_a) == [f"{namespace}/shop"]
        assert models(key_b) == [f"{other}/shop"]
        assert models(only_billing) == []

        # The cross-tenant cache probe: tenant e2e asks twice (a hit), tenant globex asks the same
        # claiming tenant e2e by header (a miss: the header selects nothing).
        def ask(key: str, **headers: str) -> str:
            status, resp_headers, body = call(chat, "POST", {**CACHEABLE, "model": "shop"}, **bearer(key), **headers)
            assert status == 200, body
            return resp_headers["x-inferstack-cache"]

        assert [ask(key_a), ask(key_a)] == ["miss", "hit"]
        assert ask(globex, **{"x-tenant-id": "e2e"}) == "miss"
        assert ask(globex, **{"x-tenant-id": f"{namespace}/e2e"}) == "hit"  # its own entry from the line above

        # Metrics and health are not on the clients' port, with or without a key.
        for path in ("/metrics", "/healthz", "/readyz"):
            assert call(router + path)[0] == 401
            assert call(router + path, **bearer(key_a))[0] == 404
        assert call(f"{dataplane.router_metrics_url}/readyz")[0] == 200

        # A malformed key Secret (the key pasted where its hash belongs) is ignored, counted, never logged.
        raw = "isk_pasted-" + uuid.uuid4().hex
        kubectl("create", "secret", "generic", "pasted", "-n", namespace, f"--from-literal=sha256={raw}",
                "--from-literal=tenant=acme", "--from-literal=stacks=*")  # fmt: skip
        kubectl("label", "secret", "pasted", "-n", namespace, "inferstack.dev/api-key=true")

        def malformed_counted() -> float:
            return sum(v for (name, labels), v in scrape(f"{dataplane.router_metrics_url}/metrics").items()
                       if name == "inferstack_router_api_key_errors_total" and ("reason", "bad_sha256") in labels)  # fmt: skip

        wait_until("the malformed Secret counted", lambda: malformed_counted() >= 1, timeout=30)
        assert call(chat, "POST", {**CACHEABLE, "model": "shop"}, **bearer(raw))[0] == 401
        logs = "".join(p.read_text(errors="replace") for p in dataplane.log_dir.glob("router-*.log"))
        for secret in (raw, key_a, key_b, globex):
            assert secret not in logs

        # Revoking: deleting the Secret locks the key out.
        kubectl("delete", "secret", "globex", "-n", namespace)
        wait_until("the revoked key refused", lambda: call(f"{router}/v1/models", **bearer(globex))[0] == 401, timeout=30)
    finally:
        kubectl("delete", "namespace", other, "--wait=false", check=False)
