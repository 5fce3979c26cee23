"""The GatewayAPI traffic provider on the real API server with the Gateway API CRDs installed."""

from __future__ import annotations

import json

from conftest import kget, kubectl, wait_until

STACK = {
    "apiVersion": "inferstack.dev/v1alpha1",
    "kind": "InferenceStack",
    "metadata": {"name": "gw-bot"},
    "spec": {
        "model": {"name": "Qwen/Qwen2.5-7B-Instruct", "revision": "a" * 40, "gpus": 1},
        "prompt": {"version": "v1", "system": "Be helpful."},
        "rollout": {"steps": [{"shadow": {"percent": 20, "duration": "2s", "minSamples": 0}}, {"canary": {"weight": 30, "duration": "1h"}}]},
        "traffic": {"provider": "GatewayAPI", "gatewayApi": {"parentRefs": [{"name": "inference-gw"}], "hostnames": ["bot.example.com"]}},
    },
}


def route(namespace):
    return kget("httproute", "gw-bot", namespace)


def backends(namespace):
    r = route(namespace)
    if not r:
        return None
    rule = r["spec"]["rules"][0]
    mirror = [f["requestMirror"] for f in rule.get("filters", []) if f["type"] == "RequestMirror"]
    return {b["name"]: b.get("weight") for b in rule["backendRefs"]}, (mirror[0]["backendRef"]["name"], mirror[0]["percent"]) if mirror else None


def test_gateway_route_follows_shadow_canary_and_abort(namespace, operator):
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(STACK))
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "istack/gw-bot", "--timeout=150s")
    stable = kget("istack", "gw-bot", namespace)["status"]["stableRevision"]
    wait_until("route to stable", lambda: backends(namespace) == ({f"gw-bot-{stable}": 100}, None))
    r = route(namespace)
    assert r["spec"]["parentRefs"][0]["name"] == "inference-gw"
    assert r["spec"]["hostnames"] == ["bot.example.com"]
    assert r["metadata"]["ownerReferences"][0]["kind"] == "InferenceStack"

    changed = json.loads(json.dumps(STACK))
    changed["spec"]["prompt"]["system"] = "Be very helpful."
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(changed))
    cand = wait_until("candidate", lambda: kget("istack", "gw-bot", namespace)["status"].get("candidateRevision"))
    # shadow: all requests to stable, 20 % mirrored to the candidate
    wait_until("mirror filter", lambda: backends(namespace) == ({f"gw-bot-{stable}": 100}, (f"gw-bot-{cand}", 20)))
    # canary 30 %: weighted backendRefs, no mirror
    wait_until("canary weights", lambda: backends(namespace) == ({f"gw-bot-{stable}": 70, f"gw-bot-{cand}": 30}, None), timeout=30)

    kubectl("annotate", "-n", namespace, "istack/gw-bot", "inferstack.dev/command=abort", "inferstack.dev/command-id=1")
    wait_until("route back to stable", lambda: backends(namespace) == ({f"gw-bot-{stable}": 100}, None), timeout=30)
    st = wait_until("Degraded", lambda: (s := kget("istack", "gw-bot", namespace)["status"])["phase"] == "Degraded" and s)
    assert st["stableRevision"] == stable and st["rolledBackRevision"] == cand
    assert st["traffic"]["candidateWeight"] == 0
    stalled = next(c for c in st["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True"
