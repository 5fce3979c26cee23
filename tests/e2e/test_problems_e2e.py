"""Stacks the operator cannot make progress on: they say why, once, and then write nothing.

* a first revision that never becomes Ready (no node has 16 free GPUs)
  turns Failed and its status stays still (the write storm this guards
  against: ~4,700 status writes in 60 s, phase alternating Pending/Failed);
* a create the API server refuses (a ResourceQuota forbidding Services)
  reaches the stack as a condition with the server's reason and a Warning
  event, and the stack recovers by itself once the quota is lifted;
* a spec the API server accepts but the operator cannot use (a missing
  ConfigMap, PromQL that does not parse) is Stalled/InvalidSpec at its
  first reconcile, not at its first rollout.
"""

from __future__ import annotations

import json
import time
from typing import Any

from conftest import kget, kubectl, wait_until

BASE: dict[str, Any] = {
    "apiVersion": "inferstack.dev/v1alpha1",
    "kind": "InferenceStack",
    "metadata": {"name": "bot"},
    "spec": {
        "model": {"name": "m", "revision": "a" * 40, "gpus": 1},
        "prompt": {"version": "v1", "system": "hi"},
        "rollout": {"progressDeadline": "20s"},
    },
}


def stack_doc(name: str, **spec: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(BASE))
    doc["metadata"]["name"] = name
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(doc["spec"].get(key), dict):
            doc["spec"][key].update(value)
        else:
            doc["spec"][key] = value
    return doc


def apply(namespace: str, doc: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))


def conditions(obj: dict[str, Any] | None) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in ((obj or {}).get("status") or {}).get("conditions", [])}


def events(namespace: str, name: str) -> list[dict[str, Any]]:
    out = kubectl("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}", "-o", "json").stdout
    return json.loads(out)["items"]


def test_a_stuck_first_revision_turns_failed_and_then_writes_nothing(namespace, operator):
    doc = stack_doc("stuck", model={"gpus": 16, "engine": {"tensorParallelSize": 16}})
    apply(namespace, doc)
    failed = wait_until(
        "the stack to turn Failed", lambda: (s := kget("istack", "stuck", namespace)) and s.get("status", {}).get("phase") == "Failed" and s, timeout=120
    )
    assert conditions(failed)["Stalled"][:2] == ("True", "ProgressDeadlineExceeded")
    assert "pods missed the progress deadline" in failed["status"]["message"]
    # Watch the object for 30 s (30 resync passes at 1 s): every write is a new resourceVersion.
    versions = {failed["metadata"]["resourceVersion"]}
    phases = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = kget("istack", "stuck", namespace)
        versions.add(now["metadata"]["resourceVersion"])
        phases.add(now["status"]["phase"])
        time.sleep(0.5)  # sampling rate of the observation, not a wait for a result
    changes = len(versions) - 1
    print(f"stuck stack: {changes} resourceVersion change(s) in 30 s after Failed; phases seen {sorted(phases)}")
    assert phases == {"Failed"}
    assert changes <= 1, f"{changes} writes of a stack that is not changing"
    writes = operator.value("inferstack_operator_api_writes_total", namespace=namespace, kind="InferenceStack")
    assert writes <= 4, f"{writes} status writes in all for a stuck stack"


def test_a_refused_create_reaches_the_stack_and_it_recovers(namespace, operator):
    kubectl("create", "quota", "no-services", "-n", namespace, "--hard=services=0")
    apply(namespace, stack_doc("quota"))
    refused = wait_until(
        "the refusal on the stack",
        lambda: (s := kget("istack", "quota", namespace)) and conditions(s).get("Stalled", ("",))[0] == "True" and s,
        timeout=60,
    )
    _, reason, message = conditions(refused)["Stalled"]
    assert reason == "Forbidden", conditions(refused)
    assert "exceeded quota: no-services" in message and "creating Service" in message
    assert refused["status"]["phase"] == "Failed" and "\n" not in refused["status"]["message"]
    warnings = wait_until(
        "one Warning event",
        lambda: [e for e in events(namespace, "quota") if e["type"] == "Warning" and e["reason"] == "Forbidden"],
        timeout=30,
    )
    # Retried with backoff but posted once: the status (and so the event) did not change.
    wait_until(
        "a few retries",
        lambda: operator.value("inferstack_operator_reconcile_errors_total", namespace=namespace, stack="quota") >= 3,
        timeout=60,
    )
    again = [e for e in events(namespace, "quota") if e["type"] == "Warning" and e["reason"] == "Forbidden"]
    assert len(again) == len(warnings) == 1 and again[0].get("count", 1) == 1, again

    kubectl("delete", "quota", "no-services", "-n", namespace)
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "istack/quota", "--timeout=120s")
    healthy = kget("istack", "quota", namespace)
    assert healthy["status"]["phase"] == "Healthy"
    assert conditions(healthy)["Stalled"][0] == "False"


def test_an_unusable_spec_is_stalled_at_the_first_reconcile(namespace, operator):
    missing = stack_doc("missing-ref", prompt={"version": "v1", "configMapRef": {"name": "prompts", "key": "system"}})
    missing["spec"]["prompt"].pop("system")
    bad_query = stack_doc(
        "bad-query",
        gates=[{"name": "quality", "prometheus": {"query": "sum(rate(x[{{window}}])"}, "threshold": {"min": 0.9}}],
    )
    for doc in (missing, bad_query):
        apply(namespace, doc)
    for name, expect in (
        ("missing-ref", "spec.prompt.configMapRef: ConfigMap prompts"),
        ("bad-query", "spec.gates[quality].prometheus.query: "),
    ):
        st = wait_until(
            f"{name} Stalled", lambda n=name: (s := kget("istack", n, namespace)) and conditions(s).get("Stalled", ("",))[0] == "True" and s, timeout=60
        )
        assert conditions(st)["Stalled"][1] == "InvalidSpec"
        assert st["status"]["phase"] == "Failed"
        message = st["status"]["message"]
        assert message.startswith(expect), message
        assert "\n" not in message and len(message) <= 240 and "Traceback" not in message
        # first reconcile: no revision was ever made
        assert not st["status"].get("stableRevision")
    # the user fixes the reference: the stack proceeds without any other change
    kubectl("create", "configmap", "prompts", "-n", namespace, "--from-literal=system=You are terse.")
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "istack/missing-ref", "--timeout=120s")
