"""A hosted model: no GPU Deployment, and the endpoint's token comes from a Secret.

The token is never written to the traffic plan (a TrafficPlan); the router
reads the Secret named in the plan and sends the token upstream.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from conftest import REPO, kget, kubectl, wait_until

from dataplane import Proc, create_api_key, free_port

TOKEN = "s3cret-token"


def ask(router: str, model: str, key: str) -> tuple[int, dict]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Who are you?"}]}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    req = urllib.request.Request(f"{router}/v1/chat/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_hosted_model_gets_its_token_from_a_secret(namespace, operator, tmp_path):
    bin_ = REPO / ".venv" / "bin"
    upstream_port, router_port, metrics_port = free_port(), free_port(), free_port()
    upstream = Proc(
        "hosted", [str(bin_ / "inferstack-standin"), "--port", str(upstream_port), "--served-model", "hosted-model", "--api-key", TOKEN],
        tmp_path, f"http://127.0.0.1:{upstream_port}/health",
    ).start()  # fmt: skip
    router = Proc(
        "router", [str(bin_ / "inferstack-router"), "--host", "127.0.0.1", "--port", str(router_port),
                   "--metrics-port", str(metrics_port), "--kubeconfig", os.environ["KUBECONFIG"], "--namespace", namespace],
        tmp_path, f"http://127.0.0.1:{metrics_port}/healthz",
    ).start()  # fmt: skip
    try:
        kubectl("create", "secret", "generic", "llm-key", "-n", namespace, f"--from-literal=api-key={TOKEN}")
        stack = {
            "apiVersion": "inferstack.dev/v1alpha1",
            "kind": "InferenceStack",
            "metadata": {"name": "hosted"},
            "spec": {
                "model": {"name": "hosted-model", "gpus": 0,
                          "endpoint": {"url": f"http://127.0.0.1:{upstream_port}/v1", "apiKeySecretRef": {"name": "llm-key"}}},
                "prompt": {"version": "v1", "system": "Be brief."},
            },
        }  # fmt: skip
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(stack))
        kubectl("wait", "-n", namespace, "--for=condition=Ready", "istack/hosted", "--timeout=150s")
        assert json.loads(kubectl("get", "deployments", "-n", namespace, "-o", "json").stdout)["items"] == []

        plan = kget("trafficplan", "hosted-traffic", namespace)
        assert TOKEN not in json.dumps(plan), "a token must never be written into a plan"
        assert plan["spec"]["stable"]["apiKeySecretRef"] == {"name": "llm-key", "key": "api-key"}

        router_url = f"http://127.0.0.1:{router_port}"
        key = create_api_key(namespace)
        _, body = wait_until("an answer through the router", lambda: (r := ask(router_url, f"{namespace}/hosted", key))[0] == 200 and r, timeout=30)
        assert body["choices"][0]["message"]["content"]
        # and the upstream really checks the token: without it, 401
        req = urllib.request.Request(
            f"http://127.0.0.1:{upstream_port}/v1/chat/completions",
            data=json.dumps({"model": "hosted-model", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError("the upstream accepted a request without its token")
        except urllib.error.HTTPError as e:
            assert e.code == 401
    finally:
        router.stop()
        upstream.stop()
