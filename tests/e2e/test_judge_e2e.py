"""LLM judges on the real control plane, real Prometheus and real traffic through the router.

The judge is the judge stand-in (``inferstack-standin --judge``): an
OpenAI-compatible server that reads the judge prompt the router wrote and
answers by the stand-in's fixture table, so each test goes through the real
judge client, prompt, parsing, metrics and the operator's paired verdict.

The candidate's prompt makes the model stand-in answer billing questions
fluently and wrongly: no refusal, same length, every rule check passes. Only
the pairwise judge, comparing its shadow answers with the stable answers to
the same requests, can see it.
"""

from __future__ import annotations

import copy
import json
import signal

import pytest
from conftest import NS_GLOB, kget, kubectl, scrape, wait_until

from dataplane import Load
from scenario import FLUENT_WRONG_PROMPT, GOOD_PROMPT, judged_stack, with_prompt


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """The data plane with a judge stand-in beside the model stand-in."""
    from dataplane import DataPlane

    dp = DataPlane(tmp_path_factory.mktemp("judged"), namespace=NS_GLOB, judge=True)
    dp.start()
    yield dp
    dp.stop()


def stack(judge_url: str, gates: list[dict]) -> dict:
    """The scenario's judged stack (pairwise judge ``preferred``) with a refusal rule check beside it and these gates."""
    manifest = judged_stack("shop", GOOD_PROMPT, [], judge_url=judge_url)
    manifest["spec"]["evaluation"]["evaluators"].append({"name": "no-refusal", "rule": {"refusal": {}}})
    manifest["spec"]["gates"] = gates
    return manifest


PAIRWISE_GATE = {"name": "judge-preference", "evaluator": "preferred", "margin": 0.1, "minSamples": 5}
RULE_GATE = {"name": "no-refusal", "evaluator": "no-refusal", "margin": 0.1, "minSamples": 3}


def apply(namespace: str, manifest: dict) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def status(namespace: str) -> dict:
    return (kget("istack", "shop", namespace) or {}).get("status", {})


def deploy(dp, namespace: str, manifest: dict) -> str:
    apply(namespace, manifest)
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "istack/shop", "--timeout=150s")
    wait_until("the router serving the stack", lambda: dp.serves(f"{namespace}/shop"))
    return status(namespace)["stableRevision"]


def test_a_fluent_wrong_candidate_is_rolled_back_by_the_pairwise_judge_in_shadow(judged, namespace):
    manifest = stack(judged.judge_url, [copy.deepcopy(RULE_GATE), copy.deepcopy(PAIRWISE_GATE)])
    stable = deploy(judged, namespace, manifest)
    with Load(judged.router_url, f"{namespace}/shop", api_key=judged.key_for(namespace)) as load:
        apply(namespace, with_prompt(manifest, FLUENT_WRONG_PROMPT))
        cand = wait_until("candidate", lambda: status(namespace).get("candidateRevision"))
        st = wait_until("rollback", lambda: (s := status(namespace)).get("phase") == "Degraded" and s, timeout=180)
    assert st["stableRevision"] == stable and st["rolledBackRevision"] == cand
    verdicts = {(g["gate"], g["slice"]): g for g in st["gates"]}
    billing = verdicts[("judge-preference", "billing")]
    assert billing["verdict"] == "Fail", st["gates"]
    # paired: both n are the pairs; the difference is net wins per pair, its interval below -margin
    assert billing["samples"] == billing["baselineSamples"] > 0
    assert billing["deltaLower"] <= billing["delta"] <= billing["deltaUpper"] < -0.1
    # every rule check passed the wrong answers: the rule gate never failed billing
    assert verdicts.get(("no-refusal", "billing"), {}).get("verdict") != "Fail", st["gates"]
    assert "judge-preference" in st["rollout"]["rollbackReason"] and "billing" in st["rollout"]["rollbackReason"]
    # rolled back in shadow: no user was ever served by the candidate
    assert load.result.failed == 0, load.result.errors
    assert load.result.by_revision[cand] == 0
    # the judge was really called, in both orders, and the router counted the pairs
    metrics = scrape(f"{judged.router_metrics_url}/metrics")
    pairs = sum(v for (name, labels), v in metrics.items() if name == "inferstack_eval_pairs_total" and ("revision", cand) in labels)
    losses = sum(
        v for (name, labels), v in metrics.items() if name == "inferstack_eval_pair_losses_total" and ("slice", "billing") in labels
    )
    assert pairs > 0 and losses > 0, metrics


def test_the_judge_down_holds_the_step_inconclusive_and_it_resumes_when_the_judge_returns(judged, namespace):
    manifest = stack(judged.judge_url, [copy.deepcopy({**PAIRWISE_GATE, "slices": ["general"]})])
    deploy(judged, namespace, manifest)
    judged.stop_judge()
    try:
        with Load(judged.router_url, f"{namespace}/shop", api_key=judged.key_for(namespace)) as load:
            apply(namespace, with_prompt(manifest, GOOD_PROMPT + " Be kind."))
            cand = wait_until("candidate", lambda: status(namespace).get("candidateRevision"))

            def held() -> dict | None:
                s = status(namespace)
                assert s.get("phase") != "Degraded", s.get("message")
                assert s.get("stableRevision") != cand, "promoted without a judge"
                errors = sum(
                    v for (name, labels), v in scrape(f"{judged.router_metrics_url}/metrics").items()
                    if name == "inferstack_eval_errors_total" and ("evaluator", "preferred") in labels
                )  # fmt: skip
                gates = s.get("gates") or []
                inconclusive = gates and all(g["verdict"] == "Inconclusive" for g in gates)
                # the status says why the evidence does not grow
                explained = gates and all("judge calls failed" in g["message"] for g in gates)
                return s if errors > 0 and inconclusive and explained and s["rollout"]["step"].startswith("shadow") else None

            st = wait_until("held in shadow, inconclusive, with judge errors counted", held, timeout=60)
            assert st["traffic"]["candidateWeight"] == 0  # held in shadow: no user sees the candidate
            judged.start_judge()

            def promoted() -> bool:
                s = status(namespace)
                assert s.get("phase") != "Degraded", s.get("message")
                return s.get("stableRevision") == cand and s.get("phase") == "Healthy"

            wait_until("promotion once the judge is back", promoted, timeout=180)
        assert load.result.failed == 0, load.result.errors
    finally:
        judged.start_judge()


def test_the_operator_killed_while_the_judge_decides_resumes_and_rolls_back_once(judged, namespace):
    manifest = stack(judged.judge_url, [copy.deepcopy(PAIRWISE_GATE)])
    stable = deploy(judged, namespace, manifest)
    with Load(judged.router_url, f"{namespace}/shop", api_key=judged.key_for(namespace)) as load:
        apply(namespace, with_prompt(manifest, FLUENT_WRONG_PROMPT))
        cand = wait_until("candidate", lambda: status(namespace).get("candidateRevision"))

        def judging() -> bool:
            s = status(namespace)
            assert s.get("phase") != "Degraded", "rolled back before the kill: nothing to resume"
            return any(g.get("samples") for g in s.get("gates") or [])

        wait_until("the judge's first pairs in status", judging, timeout=60, interval=0.05)
        judged.procs["operator"].stop(signal.SIGKILL)
        judged.start_operator()
        st = wait_until("rollback after the restart", lambda: (s := status(namespace)).get("phase") == "Degraded" and s, timeout=180)
    assert st["stableRevision"] == stable and st["rolledBackRevision"] == cand
    assert load.result.failed == 0 and load.result.by_revision[cand] == 0
    events = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    rollbacks = [e for e in events if e.get("reason") == "GateFailed" and cand in e.get("message", "")]
    assert len(rollbacks) == 1 and (rollbacks[0].get("count") or 1) == 1, rollbacks
