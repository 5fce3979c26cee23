"""User feedback as an evaluator, on the real control plane, real Prometheus and real traffic.

The stack declares a `thumbs` feedback evaluator and a gate on it. The load
is users who read each answer's `x-inferstack-revision` and post feedback to
`POST /v1/feedback` with the answer's `x-inferstack-response-id`: feedback
exists only for answers users saw, so it is judged in canary and ramp steps.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from conftest import kget, kubectl, scrape, wait_until

from dataplane import SLICE_QUESTIONS, Load
from scenario import BETTER_PROMPT, GOOD_PROMPT, support_stack, with_prompt

EVALUATION = {
    "slices": {"values": list(SLICE_QUESTIONS)},
    "evaluators": [{"name": "thumbs", "feedback": {"maxAge": "10m"}}],
}

Vote = Callable[[str, str], Any]  # (revision that answered, slice) -> the value the user posts


class FeedbackLoad(Load):
    """The Load's users, each also posting feedback on every answer they get."""

    def __init__(self, router_url: str, stack: str, vote: Vote, *, api_key: str) -> None:
        super().__init__(router_url, stack, api_key=api_key)
        self.vote = vote
        self.feedback: Counter = Counter()  # HTTP status of each feedback post

    async def _one(self, session, headers: dict[str, str], body: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
        self.result.sent += 1
        try:
            async with session.post(f"{self.router_url}/v1/chat/completions", json=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    self.result.failed += 1
                    self.result.errors[f"http {resp.status}"] += 1
                    return
                revision, response_id = resp.headers["x-inferstack-revision"], resp.headers["x-inferstack-response-id"]
            self.result.by_revision[revision] += 1
            value = self.vote(revision, headers["x-inferstack-slice"])
            async with session.post(f"{self.router_url}/v1/feedback", json={"response_id": response_id, "value": value}, headers=self.auth) as fb:
                await fb.read()
                self.feedback[fb.status] += 1
        except Exception as e:  # counted, the test decides
            self.result.failed += 1
            self.result.errors[type(e).__name__] += 1


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


def feedback_recorded(router_url: str, namespace: str) -> float:
    return sum(
        v for (name, labels), v in scrape(router_url + "/metrics").items()
        if name == "inferstack_router_feedback_recorded_total" and ("namespace", namespace) in labels
    )  # fmt: skip


def test_thumbs_down_from_canary_users_rolls_the_candidate_back(dataplane, namespace):
    gate = {"name": "thumbs-up", "evaluator": "thumbs", "margin": 0.1, "minSamples": 5}
    manifest = stack(GOOD_PROMPT, gate)
    stable = deploy(namespace, manifest)
    # Users like the answers they know and dislike the new ones.
    vote: Vote = lambda revision, _slice: "up" if revision == stable else "down"  # noqa: E731
    with FeedbackLoad(dataplane.router_url, f"{namespace}/shop", vote, api_key=dataplane.key_for(namespace)) as load:
        apply(namespace, with_prompt(manifest, BETTER_PROMPT))
        cand = wait_until("candidate", lambda: status(namespace).get("candidateRevision"))
        st = wait_until("rollback", lambda: (s := status(namespace)).get("phase") == "Degraded" and s, timeout=120)
    assert st["stableRevision"] == stable and st["rolledBackRevision"] == cand
    assert "thumbs-up" in st["rollout"]["rollbackReason"], st["rollout"]
    failed = [g for g in st["gates"] if g["verdict"] == "Fail"]
    assert failed and all(g["gate"] == "thumbs-up" for g in failed), st["gates"]
    worst = failed[0]
    assert worst["value"] == 0 and worst["baseline"] == 1 and worst["deltaUpper"] < -0.1
    # Canary users saw the candidate (feedback exists only for answers users saw) ...
    assert load.result.by_revision[cand] > 0
    assert load.result.failed == 0, load.result.errors
    # ... and every feedback post was recorded: no duplicates, forgeries or expired ids here.
    assert set(load.feedback) == {200}, load.feedback
    assert feedback_recorded(dataplane.router_metrics_url, namespace) == sum(load.feedback.values())


def test_an_identical_candidate_with_equal_feedback_is_promoted(dataplane, namespace):
    # Feedback depends on what users ask, not on who answers: billing customers are
    # unhappy whichever revision answers them, everyone else is happy.
    gate = {"name": "thumbs-up", "evaluator": "thumbs", "margin": 0.2, "minSamples": 10, "slices": ["general"]}
    manifest = stack(GOOD_PROMPT, gate)
    deploy(namespace, manifest)
    vote: Vote = lambda _revision, slice_: slice_ != "billing"  # noqa: E731
    seen: list[dict] = []
    with FeedbackLoad(dataplane.router_url, f"{namespace}/shop", vote, api_key=dataplane.key_for(namespace)) as load:
        apply(namespace, with_prompt(manifest, BETTER_PROMPT))
        cand = wait_until("candidate", lambda: status(namespace).get("candidateRevision"))

        def promoted() -> bool:
            s = status(namespace)
            seen.extend(s.get("gates") or [])
            assert s.get("phase") != "Degraded", s.get("message")
            return s.get("stableRevision") == cand and s.get("phase") == "Healthy"

        wait_until("promotion", promoted, timeout=180)
    assert load.result.failed == 0, load.result.errors
    assert set(load.feedback) == {200}, load.feedback
    assert not [g for g in seen if g["verdict"] == "Fail"]
    passes = [g for g in seen if g["verdict"] == "Pass"]
    assert {g["slice"] for g in passes} == {"general", ""}, seen[-4:]
