"""The golden-set example in docs/evaluation.md: a valid stack, cases that parse and score as documented.

(The step runs for real in tests/e2e/test_golden_e2e.py.)
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from inferstack.api.v1alpha1 import InferenceStack
from inferstack.core import evaluation, golden
from inferstack.standin.fixtures import FIXTURES, REFUSAL

DOC = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"


def section() -> str:
    text = DOC.read_text()
    return text[text.index("## Golden sets") : text.index("## User feedback")]


def documents() -> list[dict]:
    return [d for body in re.findall(r"^```yaml\n(.*?)^```", section(), re.M | re.S) for d in yaml.safe_load_all(body)]


def example() -> tuple[InferenceStack, list[golden.Case]]:
    (configmap, manifest) = documents()
    stack = InferenceStack.model_validate(manifest)
    (ev,) = golden.step_golden_sets(stack.spec, stack.spec.rollout.steps[0])
    assert ev.golden_set is not None
    ref = ev.golden_set.config_map_refs[0]
    assert (configmap["kind"], configmap["metadata"]["name"]) == ("ConfigMap", ref.name)
    text = configmap["data"][ref.key]
    return stack, golden.parse_cases([(f"{ref.name}/{ref.key}", text)], golden.declared_slices(stack.spec))


def test_the_documented_stack_evaluates_its_golden_set_before_any_traffic() -> None:
    stack, cases = example()
    assert stack.spec.rollout.steps[0].kind == "evaluate"
    assert [g.evaluator for g in stack.spec.gates] == ["golden"]
    assert [c.id for c in cases if c.critical] == ["refund-window"]


def test_the_documented_cases_pass_on_the_right_answers_and_the_critical_one_fails_on_a_refusal() -> None:
    _, cases = example()
    answers = {f.question: f.answer for f in FIXTURES}  # the stand-in model's right answers
    for case in cases:
        assert golden.passes(case, answers[case.messages[-1]["content"]]), case.id
    (critical,) = (c for c in cases if c.critical)
    assert not golden.passes(critical, REFUSAL)


def test_the_documented_error_message() -> None:
    stack, _ = example()
    (configmap, _) = documents()
    lines = configmap["data"]["cases.jsonl"].splitlines()
    lines[2] = lines[2].replace('"assertions"', '"assert"')
    try:
        golden.parse_cases([("support-golden/cases.jsonl", "\n".join(lines))], ())
    except golden.CaseError as e:
        (verdict,) = golden.inconclusive(stack.spec, "golden", str(e))
    else:
        raise AssertionError("a bad line parsed")
    documented = re.search(r"e\.g\.\n`(golden set [^`]*)`", section())
    assert documented is not None and verdict.message == documented.group(1)


def test_the_documented_evaluated_by_is_the_identity_of_the_documented_cases() -> None:
    stack, _ = example()
    (configmap, _) = documents()
    (ev,) = stack.spec.evaluation.evaluators
    hash_ = golden.cases_hash([("support-golden/cases.jsonl", configmap["data"]["cases.jsonl"])])
    documented = re.search(r"for the example above\n`(golden set [^`]*)`", section())
    assert documented is not None and evaluation.identity(ev, hash_) == documented.group(1)
