"""The judge examples in docs/evaluation.md are valid stacks, and their criteria reach the judge as written.

(Their gates' verdicts run for real in tests/e2e/test_judge_e2e.py; the doc
manifests are also validated by tests/integration/test_doc_queries.py.)
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from inferstack.api.v1alpha1 import InferenceStack, JudgeMode
from inferstack.core import judging

DOC = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"


def doc_judges() -> list:
    out = []
    for body in re.findall(r"^```yaml\n(.*?)^```", DOC.read_text(), re.M | re.S):
        for doc in yaml.safe_load_all(body):
            if isinstance(doc, dict) and doc.get("kind") == "InferenceStack":
                stack = InferenceStack.model_validate(doc)
                out += [e.judge for e in stack.spec.evaluation.evaluators if e.judge is not None]
    return out


def test_the_docs_show_both_judge_modes_and_both_targets() -> None:
    judges = doc_judges()
    assert {j.mode for j in judges} == {JudgeMode.RUBRIC, JudgeMode.PAIRWISE}
    assert any(j.endpoint for j in judges) and any(j.stack for j in judges)


def test_each_documented_criteria_is_what_the_judge_reads() -> None:
    body = {"messages": [{"role": "user", "content": "How do I get a refund?"}]}
    for judge in doc_judges():
        if judge.mode == JudgeMode.PAIRWISE:
            messages = judging.pairwise_messages(judge.criteria, body, "answer one", "answer two")
        else:
            messages = judging.rubric_messages(judge.criteria, body, "answer one")
        prompt = messages[-1]["content"]
        assert judging.read_section(prompt, judging.CRITERIA) == judge.criteria
        assert judging.read_section(prompt, judging.CONVERSATION) == "user: How do I get a refund?"
        assert len(judging.identity(judge)) == 12
