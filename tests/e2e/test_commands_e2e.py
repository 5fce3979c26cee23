"""Manual control through the kubectl plugin, on the real API server.

`kubectl istack` writes the command annotations; the operator carries each
command out once. pause -> resume -> promote (one step) -> promote --full ->
undo to the previous, still warm revision (switched at once, no steps).
"""

from __future__ import annotations

import json
import os

from conftest import REPO, kget, kubectl, wait_until

from scenario import BETTER_PROMPT, GOOD_PROMPT, support_stack


def istack(*args: str) -> str:
    import subprocess

    proc = subprocess.run(
        [str(REPO / ".venv/bin/kubectl-istack"), "--kubeconfig", os.environ["KUBECONFIG"], *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def status(namespace: str) -> dict:
    return (kget("istack", "cmd", namespace) or {}).get("status", {})


def test_pause_resume_promote_full_and_undo_through_the_plugin(namespace, operator):
    # Steps too long to end by themselves: only commands move this rollout.
    manifest = support_stack(
        "cmd", GOOD_PROMPT, gates=[], scaleDownDelay="1h",
        steps=[{"canary": {"weight": 10, "duration": "1h"}}, {"canary": {"weight": 30, "duration": "1h"}},
               {"canary": {"weight": 60, "duration": "1h"}}],
    )  # fmt: skip
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "istack/cmd", "--timeout=150s")
    first = status(namespace)["stableRevision"]
    manifest["spec"]["prompt"]["system"] = BETTER_PROMPT
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    cand = wait_until("canary 10%", lambda: (s := status(namespace)).get("traffic", {}).get("candidateWeight") == 10 and s["candidateRevision"])

    istack("-n", namespace, "pause", "cmd")
    wait_until("Paused", lambda: status(namespace).get("phase") == "Paused")
    istack("-n", namespace, "promote", "cmd")  # a promote while paused moves one step and stays paused
    wait_until("canary 30%", lambda: status(namespace)["traffic"]["candidateWeight"] == 30)
    istack("-n", namespace, "resume", "cmd")
    wait_until("Progressing", lambda: status(namespace).get("phase") == "Progressing")
    assert status(namespace)["traffic"]["candidateWeight"] == 30, "resume does not skip a step"

    istack("-n", namespace, "promote", "cmd", "--full")
    st = wait_until("promoted", lambda: (s := status(namespace)).get("stableRevision") == cand and s.get("phase") == "Healthy" and s)
    assert st["traffic"]["candidateWeight"] == 0
    out = istack("-n", namespace, "status", "cmd")
    assert "Healthy" in out and cand in out

    # the previous revision is still warm (scaleDownDelay 1h): undo switches at once
    assert kget("deployment", f"cmd-{first}", namespace)["spec"]["replicas"] == 1
    istack("-n", namespace, "undo", "cmd", "--to", first)
    st = wait_until("undone", lambda: (s := status(namespace)).get("stableRevision") == first and s)
    assert st.get("candidateRevision") is None and st["traffic"]["candidateWeight"] == 0
    plan = kget("trafficplan", "cmd-traffic", namespace)["spec"]
    assert plan["stable"]["revision"] == first and plan.get("candidate") is None
    history = istack("-n", namespace, "history", "cmd")
    assert first in history and cand in history
    events = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    reasons = [e["reason"] for e in events]
    assert reasons.count("Promoted") >= 2, reasons  # promote-full, then the undo target
