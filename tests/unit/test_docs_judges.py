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
from inferstack.core.retrieval import Document
from inferstack.router.evaluators import AnswerView, compile_rule

DOC = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"


def doc_stacks() -> list[InferenceStack]:
    out = []
    for body in re.findall(r"^```yaml\n(.*?)^```", DOC.read_text(), re.M | re.S):
        for doc in yaml.safe_load_all(body):
            if isinstance(doc, dict) and doc.get("kind") == "InferenceStack":
                out.append(InferenceStack.model_validate(doc))
    return out


def doc_judges() -> list:
    return [e.judge for stack in doc_stacks() for e in stack.spec.evaluation.evaluators if e.judge is not None]


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


def test_the_groundedness_example_gates_on_citations_and_on_a_judge_that_sees_the_documents() -> None:
    (stack,) = [s for s in doc_stacks() if s.spec.retriever is not None]  # valid: its store makes the cites gate legal
    evaluators = {e.name: e for e in stack.spec.evaluation.evaluators}
    gated = {g.evaluator for g in stack.spec.gates}
    assert gated == {"cites-sources", "grounded"}
    rule = evaluators["cites-sources"].rule
    assert rule is not None and rule.cites_retrieved is not None
    cites = compile_rule(rule, {})
    answer = "Refunds take 5 days [kb-12]."
    assert cites({}, AnswerView(answer, length=len(answer), retrieved=("kb-12", "kb-3"))) == 1.0
    assert cites({}, AnswerView(answer, length=len(answer), retrieved=("kb-3",))) == 0.0
    assert cites({}, AnswerView(answer, length=len(answer))) is None

    judge = evaluators["grounded"].judge
    assert judge is not None and judge.mode == JudgeMode.RUBRIC
    documents = judging.documents_text([Document("kb-12", "Refunds take 5 days.", 0.9)])
    body = {"messages": [{"role": "user", "content": "How do I get a refund?"}]}
    prompt = judging.rubric_messages(judge.criteria, body, answer, documents)[-1]["content"]
    assert judging.read_section(prompt, judging.CRITERIA) == judge.criteria
    assert judging.read_section(prompt, judging.DOCUMENTS) == "[kb-12] Refunds take 5 days."
    assert judging.read_section(prompt, judging.ANSWER) == answer


def test_the_direction_example_gates_a_harm_score_lower_is_better() -> None:
    from inferstack.core.evaluation import Arm, judge, sequence_alpha, threshold_text
    from inferstack.core.gates import Verdict
    from inferstack.core.sequential import Direction

    (stack,) = [s for s in doc_stacks() if any(g.direction is not None for g in s.spec.gates)]
    (gate,) = stack.spec.gates
    (ev,) = stack.spec.evaluation.evaluators
    assert gate.effective_direction == Direction.LOWER and ev.judge is not None and ev.judge.mode == JudgeMode.RUBRIC
    assert threshold_text(gate) == "\u0394 < +0.03"  # as the page says
    alpha = sequence_alpha(stack.spec)
    stable = Arm(20000, 0.10 * 20000, 0.10 * 20000)  # the stable revision's mean harm: 0.10

    def verdict(mean: float) -> Verdict:
        return judge(gate, "billing", Arm(20000, mean * 20000, mean * 20000), stable, alpha).verdict

    assert verdict(0.05) == Verdict.PASS  # the candidate makes up less policy
    assert verdict(0.18) == Verdict.FAIL  # 8 points more: beyond the margin of 0.03
