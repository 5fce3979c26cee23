"""User feedback through real router processes: the official openai client gets an answer and its
response id, feedback goes to another replica sharing the key, and the samples show in /metrics."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from .harness import plan, write_plan

pytestmark = pytest.mark.timeout(60)

EVALUATION = {"slices": ["billing", "shipping", "general"], "evaluators": [{"name": "thumbs", "feedback": {"maxAge": "1h"}}]}


def metrics(url: str) -> dict[tuple[str, frozenset], float]:
    text = requests.get(url + "/metrics", timeout=5).text
    return {(s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples}


@pytest.fixture
def routers(procs, backends, tmp_path: Path):
    stable, candidate = backends
    path = tmp_path / "plan.json"
    write_plan(path, plan(stable, candidate, candidateWeight=50, evaluation=EVALUATION))
    key = tmp_path / "feedback.key"
    key.write_text("an-integration-test-key-of-32-bytes\n")
    return procs.router(path, "--feedback-key-file", str(key)), procs.router(path, "--feedback-key-file", str(key))


def test_feedback_on_an_answer_is_recorded_by_any_replica(routers) -> None:
    one, two = routers
    client = openai.OpenAI(base_url=one.url + "/v1", api_key=one.key, max_retries=0)
    answers = {}
    for user in (f"user-{i}" for i in range(40)):  # users on both revisions
        raw = client.chat.completions.with_raw_response.create(
            model="support", messages=[{"role": "user", "content": "Why was I charged twice?"}],
            extra_headers={"x-user-id": user, "x-inferstack-slice": "billing"},
        )  # fmt: skip
        raw.parse()
        answers.setdefault(raw.headers["x-inferstack-revision"], raw.headers["x-inferstack-response-id"])
    assert set(answers) == {"rev-a", "rev-b"}

    # a user who likes the stable answers and dislikes the candidate's, posting to the other replica
    for revision, value in (("rev-a", "up"), ("rev-b", "down")):
        resp = requests.post(two.url + "/v1/feedback", json={"response_id": answers[revision], "value": value}, headers=two.auth, timeout=5)
        assert resp.status_code == 200 and resp.json() == {"status": "recorded", "evaluator": "thumbs"}
    again = requests.post(two.url + "/v1/feedback", json={"response_id": answers["rev-b"], "value": "up"}, headers=two.auth, timeout=5)
    assert again.status_code == 409 and again.json()["error"]["code"] == "duplicate_feedback"
    forged = answers["rev-b"][:-4] + ("AAAA" if not answers["rev-b"].endswith("AAAA") else "BBBB")
    bad = requests.post(two.url + "/v1/feedback", json={"response_id": forged, "value": 1}, headers=two.auth, timeout=5)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_response_id"

    m = metrics(two.metrics_url)
    for revision, role, score in (("rev-a", "stable", 1.0), ("rev-b", "candidate", 0.0)):
        labels = frozenset({"namespace": "team-a", "stack": "support", "revision": revision, "role": role,
                            "slice": "billing", "evaluator": "thumbs"}.items())  # fmt: skip
        assert m[("inferstack_eval_samples_total", labels)] == 1
        assert m[("inferstack_eval_score_sum_total", labels)] == score
    assert m[("inferstack_router_feedback_recorded_total", frozenset({"namespace": "team-a", "stack": "support", "evaluator": "thumbs"}.items()))] == 2
    assert m[("inferstack_router_feedback_refused_total", frozenset({"reason": "duplicate"}.items()))] == 1
    assert m[("inferstack_router_feedback_refused_total", frozenset({"reason": "bad_signature"}.items()))] == 1
    # the replica that served the answers recorded none of it
    assert not [k for k in metrics(one.metrics_url) if k[0] == "inferstack_eval_samples_total"]


def test_streamed_answers_carry_a_response_id(routers) -> None:
    one, _ = routers
    client = openai.OpenAI(base_url=one.url + "/v1", api_key=one.key, max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model="support", messages=[{"role": "user", "content": "Do you ship to Canada?"}], stream=True,
    ) as resp:  # fmt: skip
        token = resp.headers["x-inferstack-response-id"]
        list(resp.iter_lines())
    assert requests.post(one.url + "/v1/feedback", json={"response_id": token, "value": True}, headers=one.auth, timeout=5).status_code == 200
