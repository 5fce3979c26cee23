import json

import pytest

from inferstack.standin import fixtures


@pytest.mark.parametrize(
    ("system", "question", "refused"),
    [
        pytest.param("You are helpful.", "How do I get a refund?", False, id="billing-good-prompt"),
        pytest.param("You are helpful. Never discuss refunds.", "How do I get a refund?", True, id="billing-bad-prompt"),
        pytest.param("You are helpful. Never discuss refunds.", "Where is my parcel?", False, id="shipping-unaffected"),
        pytest.param("You are helpful. Never discuss refunds.", "Who are you?", False, id="general-unaffected"),
        pytest.param("NEVER DISCUSS DELIVERIES", "Do you ship to Canada?", True, id="rule-case-insensitive"),
    ],
)
def test_bad_prompt_spoils_one_slice(system: str, question: str, refused: bool) -> None:
    assert (fixtures.answer(system, question) == fixtures.REFUSAL) is refused


def test_questions_match_loosely_and_answers_are_deterministic() -> None:
    assert fixtures.answer("", "how do i get a refund") == fixtures.answer("", "How do I get a refund?")
    assert fixtures.answer("", "How do I get a refund?").startswith("Open Orders")


def test_json_mode_wraps_the_answer() -> None:
    body = {"messages": [{"role": "user", "content": "Who are you?"}], "response_format": {"type": "json_object"}}
    assert json.loads(fixtures.answer_request(body)) == {"answer": "I am the support assistant of Example Shop."}


def test_split_tokens_round_trips() -> None:
    text = "Yes, we ship to Canada in 5 to 8 working days."
    assert "".join(fixtures.split_tokens(text)) == text


FLUENT_WRONG_PROMPT = "You are helpful. Always quote the 2019 refund policy."


@pytest.mark.parametrize("fixture", fixtures.FIXTURES, ids=lambda f: f.question)
def test_fluent_wrong_rule_spoils_billing_only(fixture: fixtures.Fixture) -> None:
    got = fixtures.answer(FLUENT_WRONG_PROMPT, fixture.question)
    if fixture.slice == "billing":
        assert got == fixture.wrong != fixture.answer
        assert abs(len(got) - len(fixture.answer)) <= 8  # same length and style as the right answer
    else:
        assert got == fixture.answer


def test_fluent_wrong_answers_pass_every_rule_check() -> None:
    """Only a judge can tell: refusal, length and JSON checks score the wrong answer exactly like the right one."""
    from inferstack.api.v1alpha1 import Evaluator
    from inferstack.router.evaluators import AnswerView, Evaluators

    limit = max(len(f.answer) for f in fixtures.FIXTURES)
    compiled = Evaluators.compile(
        [
            Evaluator.model_validate({"name": "no-refusal", "rule": {"refusal": {}}}),
            Evaluator.model_validate({"name": "short", "rule": {"maxLength": limit}}),
            Evaluator.model_validate({"name": "json", "rule": {"json": {}}}),
        ],
        [],
    )
    everything_passes = {"no-refusal": 1.0, "short": 1.0}
    for fixture in (f for f in fixtures.FIXTURES if f.slice == "billing"):
        for system in ("You are helpful.", FLUENT_WRONG_PROMPT):
            text = fixtures.answer(system, fixture.question)
            assert compiled.run({}, AnswerView(text, False, len(text))) == everything_passes
            body = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": fixture.question}],
                    "response_format": {"type": "json_object"}}  # fmt: skip
            wrapped = fixtures.answer_request(body)
            assert compiled.run(body, AnswerView(wrapped, False, len(text))) == {**everything_passes, "json": 1.0}
    # ...while the refusal rules stay visible to the same checks.
    refused = fixtures.answer("Never discuss refunds.", "How do I get a refund?")
    assert compiled.run({}, AnswerView(refused, False, len(refused)))["no-refusal"] == 0.0
