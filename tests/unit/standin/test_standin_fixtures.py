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
