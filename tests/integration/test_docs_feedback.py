"""The "User feedback" example of docs/evaluation.md, run as written against a real router.

The manifest is a valid stack; its evaluators, in a plan, make the router accept
feedback; the Python block runs unchanged (``ROUTER`` is the router's URL) and
gets the documented answer; posting it again gets the documented error; the
table of refusals names exactly the router's reasons.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests
import yaml

from inferstack.api.v1alpha1 import InferenceStack
from inferstack.router.feedback import MAX_ID_CHARS, REASONS

from .harness import write_plan

pytestmark = pytest.mark.timeout(60)

DOC = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"


def section() -> str:
    text = DOC.read_text()
    return text.split("\n## User feedback\n", 1)[1].split("\n## ", 1)[0]


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", section(), re.M | re.S)


def test_the_manifest_declares_a_feedback_evaluator_and_gates_on_it() -> None:
    (manifest,) = blocks("yaml")
    stack = InferenceStack.model_validate(yaml.safe_load(manifest))
    (evaluator,) = stack.spec.evaluation.evaluators
    assert evaluator.kind == "feedback"
    assert [g.evaluator for g in stack.spec.gates] == [evaluator.name]


def test_the_table_names_every_refusal_reason_and_the_id_bound() -> None:
    reasons = {r for row in re.findall(r"^\| \d{3} \|[^|]*\|([^|]*)\|", section(), re.M) for r in re.findall(r"`(\w+)`", row)}
    assert reasons == set(REASONS)
    assert f"at most {MAX_ID_CHARS:,} characters" in section()


def test_the_python_example_runs_and_gets_the_documented_answers(procs, tmp_path: Path) -> None:
    (manifest,) = blocks("yaml")
    spec = yaml.safe_load(manifest)
    stable = procs.standin("model-a")
    path = tmp_path / "plan.json"
    write_plan(path, {
        "stack": spec["metadata"]["name"], "namespace": "default", "serial": 1,
        "stable": {"revision": "rev-a", "url": stable.url, "servedModel": "model-a", "cacheNamespace": "default.support-bot.rev-a"},
        "evaluation": {"slices": spec["spec"]["evaluation"]["slices"]["values"], "evaluators": spec["spec"]["evaluation"]["evaluators"]},
    })  # fmt: skip
    key = tmp_path / "key"
    key.write_text("a-docs-example-key-0123456789\n")
    router = procs.router(path, "--feedback-key-file", str(key), namespaces=("default",))

    (example,) = blocks("python")
    scope: dict = {"ROUTER": router.url, "API_KEY": router.key}
    exec(compile(example, "docs/evaluation.md", "exec"), scope)  # the documented example, as written
    recorded, duplicate = (json.loads(b) for b in blocks("json"))
    assert scope["answer"] and scope["feedback"].status_code == 200
    assert scope["feedback"].json() == recorded
    again = requests.post(f"{router.url}/v1/feedback", json={"response_id": scope["response_id"], "value": "down"}, headers=router.auth, timeout=5)
    assert again.status_code == 409 and again.json() == duplicate
    metrics = requests.get(router.metrics_url + "/metrics", timeout=5).text
    assert ('inferstack_eval_samples_total{evaluator="thumbs",namespace="default",revision="rev-a",role="stable",'
            'slice="billing",stack="support-bot"} 1.0') in metrics  # fmt: skip
