"""Evaluator gates on the real control plane, real Prometheus and real traffic through the router.

The stack declares its slices and a `no-refusal` rule check; the gate is an
evaluator gate: the operator writes the queries and judges candidate minus
stable with an anytime-valid confidence sequence. The status shows both
arms, the difference and its interval.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess

from conftest import REPO, kget, kubectl, wait_until

from dataplane import SLICE_QUESTIONS, Load
from scenario import BAD_PROMPT, BETTER_PROMPT, GOOD_PROMPT, support_stack, with_prompt

EVALUATION = {
    "slices": {"values": list(SLICE_QUESTIONS)},  # billing, shipping, general; the load sends x-inferstack-slice
    "evaluators": [{"name": "no-refusal", "rule": {"refusal": {}}}],
}


def stack(system: str, gate: dict) -> dict:
    manifest = support_stack("shop", system, gates=[gate])
    manifest["spec"]["evaluation"] = copy.deepcopy(EVALUATION)
    return manifest


def apply(namespace: str, manifest: dict) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def status(namespace: str) -> dict:
    return (kget("istack", "shop", namespace) or {}).get("status", {})




def deploy(namespace: str, manifest: dict) -> str:
    apply(namespace, manifest)
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "istack/shop", "--timeout=150s")
    return status(namespace)["stableRevision"]


def test_a_candidate_refusing_billing_is_rolled_back_in_shadow_with_its_interval(dataplane, namespace):
    gate = {"name": "quality", "evaluator": "no-refusal", "margin": 0.1, "minSamples": 5}
    manifest = stack(GOOD_PROMPT, gate)
    stable = deploy(namespace, manifest)
    with Load(dataplane.router_url, f"{namespace}/shop", api_key=dataplane.key_for(namespace)) as load:
        apply(namespace, with_prompt(manifest, BAD_PROMPT))
        cand = wait_until("candidate", lambda: status(namespace).get("candidateRevision"))
        st = wait_until("rollback", lambda: (s := status(namespace)).get("phase") == "Degraded" and s, timeout=120)
    assert st["stableRevision"] == stable and st["rolledBackRevision"] == cand
    billing = next(g for g in st["gates"] if g["slice"] == "billing")
    assert billing["verdict"] == "Fail", st["gates"]
    # both arms, the difference and its interval, entirely below -margin
    assert billing["value"] == 0 and billing["baseline"] == 1
    assert billing["samples"] > 0 and billing["baselineSamples"] > billing["samples"]
    assert billing["deltaLower"] <= billing["delta"] <= billing["deltaUpper"] < -0.1
    assert "billing  \u0394 \u22121.00 [" in billing["message"]
    others = [g for g in st["gates"] if g["slice"] in ("shipping", "general")]
    assert others and all(g["verdict"] != "Fail" for g in others), others  # only billing regressed
    assert load.result.failed == 0, load.result.errors
    # the rollback happened in shadow: no user was ever served by the candidate
    assert load.result.by_revision[cand] == 0
    assert "quality" in st["rollout"]["rollbackReason"] and "billing" in st["rollout"]["rollbackReason"]
    # kubectl istack status shows both arms' samples and the interval on the difference
    out = subprocess.run(
        [str(REPO / ".venv/bin/kubectl-istack"), "--kubeconfig", os.environ["KUBECONFIG"], "-n", namespace, "status", "shop"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    row = next(line for line in out.splitlines() if line.split()[:2] == ["quality", "billing"])
    assert "-1.000 [" in row and f"{round(billing['samples'])}/{round(billing['baselineSamples'])}" in row, out


def test_an_identical_candidate_is_promoted_without_a_false_rollback(dataplane, namespace):
    # general is 60 % of the traffic: enough samples per step for a quick Pass
    gate = {"name": "quality", "evaluator": "no-refusal", "margin": 0.2, "minSamples": 10, "slices": ["general"]}
    manifest = stack(GOOD_PROMPT, gate)
    deploy(namespace, manifest)
    seen: list[dict] = []
    with Load(dataplane.router_url, f"{namespace}/shop", api_key=dataplane.key_for(namespace)) as load:
        apply(namespace, with_prompt(manifest, BETTER_PROMPT))
        cand = wait_until("candidate", lambda: status(namespace).get("candidateRevision"))

        def promoted() -> bool:
            s = status(namespace)
            seen.extend(s.get("gates") or [])
            assert s.get("phase") != "Degraded", s.get("message")
            return s.get("stableRevision") == cand and s.get("phase") == "Healthy"

        wait_until("promotion", promoted, timeout=180)
    assert load.result.failed == 0, load.result.errors
    passes = [g for g in seen if g["verdict"] == "Pass"]
    assert {g["slice"] for g in passes} == {"general", ""}, seen[-4:]
    assert all(g["deltaLower"] > -0.2 for g in passes)
    assert not [g for g in seen if g["verdict"] == "Fail"]
