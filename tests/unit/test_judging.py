"""The pure core of LLM judging (core/judging.py): prompts, reply parsing, pair outcomes, sampling, identity."""

from __future__ import annotations

import math
from typing import Any

import pytest

from inferstack.api.v1alpha1 import LLMJudge
from inferstack.core import judging
from inferstack.core.judging import (
    ANSWER,
    ANSWER_A,
    ANSWER_B,
    CONVERSATION,
    CRITERIA,
    DOCUMENTS,
    DOCUMENTS_A,
    DOCUMENTS_B,
    MAX_ANSWER_CHARS,
    MAX_CONVERSATION_CHARS,
    MAX_DOCUMENT_CHARS,
    MAX_DOCUMENTS_CHARS,
    NO_DOCUMENTS,
    PAIRWISE_SYSTEM,
    PAIRWISE_SYSTEM_WITH_DOCUMENTS,
    RUBRIC_SYSTEM,
    RUBRIC_SYSTEM_WITH_DOCUMENTS,
    JudgeReplyError,
    conversation,
    documents_text,
    identity,
    pair_outcome,
    pairwise_messages,
    parse_choice,
    parse_rating,
    read_section,
    reply_text,
    request_body,
    rubric_messages,
    sample_point,
    sampled,
    section,
)
from inferstack.core.retrieval import Document

# ------------------------------------------------------------------ ratings


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        pytest.param("Rating: [[7]]", 7, id="plain"),
        pytest.param("[[1]]", 1, id="lowest"),
        pytest.param("[[10]]", 10, id="highest"),
        pytest.param("Rating: [[ 8 ]]", 8, id="spaces-inside"),
        pytest.param("Rating: [[7.5]]", 7.5, id="decimal"),
        pytest.param("I first thought [[3]], but on reflection: Rating: [[9]]", 9, id="last-wins"),
        pytest.param("[[9]] was tempting. Final: [[2]]", 2, id="last-wins-lower"),
        pytest.param("Explanation [[A]] then Rating: [[6]]", 6, id="ignores-choices"),
    ],
)
def test_parse_rating(reply: str, rating: float) -> None:
    assert parse_rating(reply) == pytest.approx((rating - 1) / 9)
    assert 0.0 <= parse_rating(reply) <= 1.0


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param("", id="empty"),
        pytest.param("Rating: 7", id="no-brackets"),
        pytest.param("Rating: [7]", id="single-brackets"),
        pytest.param("Rating: [[seven]]", id="words"),
        pytest.param("Rating: [[0]]", id="zero"),
        pytest.param("Rating: [[11]]", id="eleven"),
        pytest.param("Rating: [[10.5]]", id="decimal-above"),
        pytest.param("Rating: [[0.5]]", id="decimal-below"),
        pytest.param("Rating: [[-3]]", id="negative"),
        pytest.param("[[5]] at first; final rating [[11]]", id="last-out-of-range"),
        pytest.param("Verdict: [[A]]", id="a-choice-is-not-a-rating"),
    ],
)
def test_parse_rating_refuses(reply: str) -> None:
    with pytest.raises(JudgeReplyError):
        parse_rating(reply)


# ------------------------------------------------------------------ choices


@pytest.mark.parametrize(
    ("reply", "choice"),
    [
        ("[[A]]", "A"),
        ("[[B]]", "B"),
        ("[[C]]", "C"),
        ("Final verdict: [[ B ]]", "B"),
        ("Assistant A seemed [[A]] at first, but the final verdict is [[C]]", "C"),
        ("Rating [[7]] is irrelevant here. [[A]]", "A"),
    ],
)
def test_parse_choice(reply: str, choice: str) -> None:
    assert parse_choice(reply) == choice


@pytest.mark.parametrize("reply", ["", "A is better", "[A]", "[[D]]", "[[a]]", "[[AB]]", "Rating: [[7]]"])
def test_parse_choice_refuses(reply: str) -> None:
    with pytest.raises(JudgeReplyError):
        parse_choice(reply)


# -------------------------------------------------------- pair outcomes

# (stable first: stable is A) x (candidate first: candidate is A) -> candidate's outcome.
PAIR_TABLE = [
    ("A", "A", 0.0),  # position bias: A both times, a tie
    ("A", "B", -1.0),  # stable better in both orders: a loss
    ("A", "C", 0.0),
    ("B", "A", 1.0),  # candidate better in both orders: a win
    ("B", "B", 0.0),  # position bias the other way: a tie
    ("B", "C", 0.0),
    ("C", "A", 0.0),
    ("C", "B", 0.0),
    ("C", "C", 0.0),
]


@pytest.mark.parametrize(("stable_first", "candidate_first", "outcome"), PAIR_TABLE)
def test_pair_outcome(stable_first: Any, candidate_first: Any, outcome: float) -> None:
    assert pair_outcome(stable_first, candidate_first) == outcome


def test_pair_table_is_complete_and_symmetric() -> None:
    assert len({(a, b) for a, b, _ in PAIR_TABLE}) == 9
    for a, b, outcome in PAIR_TABLE:
        # Swap which revision is the candidate: the same two prompts, their verdicts trade places,
        # and the candidate's loss is the other side's win.
        assert pair_outcome(b, a) == -outcome


# ----------------------------------------------------------------- sampling

IDS = [f"req-{i}" for i in range(20_000)]


def within_binomial(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_sample_point_is_deterministic_and_in_range() -> None:
    points = [sample_point(i, "quality") for i in IDS[:1000]]
    assert points == [sample_point(i, "quality") for i in IDS[:1000]]
    assert all(0.0 <= p < 1.0 for p in points)
    assert len(set(points)) == 1000


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.25, 0.5, 0.9])
def test_sampled_rate_is_right(rate: float) -> None:
    hits = sum(sampled(i, "quality", rate) for i in IDS)
    assert within_binomial(hits, len(IDS), rate), (hits, rate)


def test_sampled_is_deterministic() -> None:
    first = [i for i in IDS if sampled(i, "quality", 0.1)]
    assert first == [i for i in IDS if sampled(i, "quality", 0.1)]


def test_sampled_rate_one_is_everything_and_rates_nest() -> None:
    assert all(sampled(i, "quality", 1.0) for i in IDS[:2000])
    # A lower rate's sample is a subset of a higher rate's: raising the rate only adds requests.
    low = {i for i in IDS if sampled(i, "quality", 0.05)}
    high = {i for i in IDS if sampled(i, "quality", 0.2)}
    assert low <= high


def test_sampled_is_independent_per_evaluator() -> None:
    rate, n = 0.1, len(IDS)
    a = {i for i in IDS if sampled(i, "quality", rate)}
    b = {i for i in IDS if sampled(i, "preferred", rate)}
    assert a != b
    # Independent: the overlap is what two independent 10 % samples share (1 %), not 10 %.
    assert within_binomial(len(a & b), n, rate * rate), len(a & b)


# ----------------------------------------------------------------- identity


def judge(**changes: Any) -> LLMJudge:
    data: dict[str, Any] = {
        "mode": "Rubric",
        "endpoint": {"url": "https://judge.example.com/v1", "model": "judge-large"},
        "criteria": "Correct and polite.",
        "sampleRate": 0.1,
        "maxCallsPerMinute": 60,
        "timeout": "30s",
    }
    data.update(changes)
    return LLMJudge.model_validate(data)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"criteria": "Correct, polite and brief."}, id="criteria"),
        pytest.param({"endpoint": {"url": "https://judge.example.com/v1", "model": "judge-small"}}, id="model"),
        pytest.param({"endpoint": {"url": "https://other.example.com/v1", "model": "judge-large"}}, id="url"),
        pytest.param({"mode": "Pairwise"}, id="mode"),
        pytest.param({"endpoint": None, "stack": "judge-stack"}, id="stack-instead"),
    ],
)
def test_identity_changes_with_what_makes_a_verdict(changes: dict[str, Any]) -> None:
    assert identity(judge(**changes)) != identity(judge())


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"sampleRate": 0.5}, id="sample-rate"),
        pytest.param({"maxCallsPerMinute": 5}, id="budget"),
        pytest.param({"timeout": "5s"}, id="timeout"),
        pytest.param(
            {"endpoint": {"url": "https://judge.example.com/v1", "model": "judge-large",
                          "apiKeySecretRef": {"name": "judge-key", "key": "token"}}},
            id="api-key-ref",
        ),
        pytest.param({"endpoint": {"url": "https://judge.example.com", "model": "judge-large"}}, id="url-without-v1"),
    ],
)
def test_identity_ignores_how_many_verdicts(changes: dict[str, Any]) -> None:
    assert identity(judge(**changes)) == identity(judge())


def test_identity_changes_with_the_prompt_version(monkeypatch: pytest.MonkeyPatch) -> None:
    before = identity(judge())
    assert len(before) == 12 and int(before, 16) >= 0
    monkeypatch.setattr(judging, "PROMPT_VERSION", "inferstack-judge-v3")
    assert identity(judge()) != before


def test_describe_names_mode_target_and_identity() -> None:
    text = judging.describe(judge(mode="Pairwise"))
    assert text.startswith("pairwise judge judge-large at https://judge.example.com")
    assert identity(judge(mode="Pairwise")) in text
    assert "stack judge-stack" in judging.describe(judge(endpoint=None, stack="judge-stack"))


# ------------------------------------------------------------ conversation


def test_conversation_is_the_client_messages_by_role() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Client system prompt."},
            {"role": "user", "content": "Who are you?"},
            {"role": "assistant", "content": [{"type": "text", "text": "The"}, {"type": "text", "text": "assistant."}]},
            {"role": "user", "content": "How do I get a refund?"},
            "not a message",
            {"content": "no role"},
        ]
    }
    assert conversation(body) == (
        "system: Client system prompt.\nuser: Who are you?\nassistant: The assistant.\n"
        "user: How do I get a refund?\nuser: no role"
    )


def test_conversation_never_holds_the_stack_system_prompt() -> None:
    # The judge sees the client's request (the body the client sent), never the
    # stack's system prompt the router adds on the way to the backend.
    from inferstack.core.trafficplan import RevisionBundle
    from inferstack.router.bundle import apply_bundle

    client = {"model": "support", "messages": [{"role": "user", "content": "How do I get a refund?"}]}
    bundle = RevisionBundle.model_validate(
        {"revision": "rev-a", "url": "http://x", "servedModel": "m", "cacheNamespace": "c",
         "systemPrompt": "SECRET STACK PROMPT"}
    )
    upstream = apply_bundle(client, bundle, "t", chat=True)
    assert "SECRET STACK PROMPT" in str(upstream["messages"])
    assert "SECRET STACK PROMPT" not in conversation(client)
    assert "SECRET STACK PROMPT" not in str(rubric_messages("c", client, "an answer"))


def test_conversation_keeps_the_newest_part() -> None:
    old = {"role": "user", "content": "OLDEST " + "x" * MAX_CONVERSATION_CHARS}
    new = {"role": "user", "content": "the newest question"}
    text = conversation({"messages": [old, new]})
    assert len(text) == MAX_CONVERSATION_CHARS
    assert text.endswith("user: the newest question")
    assert "OLDEST" not in text


def test_conversation_of_a_completions_prompt() -> None:
    assert conversation({"prompt": "Complete this"}) == "Complete this"
    assert conversation({"prompt": ["a", "b"]}) == '["a", "b"]'
    long = "OLD" + "y" * MAX_CONVERSATION_CHARS + "NEW"
    text = conversation({"prompt": long})
    assert len(text) == MAX_CONVERSATION_CHARS and text.endswith("NEW")


# ------------------------------------------------------------------ prompts

BODY = {"messages": [{"role": "user", "content": "How do I get a refund?"}]}


def user_text(messages: list[dict[str, str]]) -> str:
    assert [m["role"] for m in messages] == ["system", "user"]
    return messages[1]["content"]


def test_rubric_prompt_puts_each_part_in_its_section() -> None:
    messages = rubric_messages("Be correct.", BODY, "Open Orders and press Refund.")
    assert messages[0]["content"] == RUBRIC_SYSTEM
    text = user_text(messages)
    assert read_section(text, CRITERIA) == "Be correct."
    assert read_section(text, CONVERSATION) == "user: How do I get a refund?"
    assert read_section(text, ANSWER) == "Open Orders and press Refund."
    assert read_section(text, ANSWER_A) is None and read_section(text, ANSWER_B) is None


def test_pairwise_prompt_puts_each_answer_in_its_section() -> None:
    messages = pairwise_messages("Be correct.", BODY, "first answer", "second answer")
    assert messages[0]["content"] == PAIRWISE_SYSTEM
    text = user_text(messages)
    assert read_section(text, CRITERIA) == "Be correct."
    assert read_section(text, CONVERSATION) == "user: How do I get a refund?"
    assert read_section(text, ANSWER_A) == "first answer"
    assert read_section(text, ANSWER_B) == "second answer"
    assert read_section(text, ANSWER) is None  # "Answer" alone is not a prefix match of the others


KB = [Document("kb-1", "Refunds take 5 days.", 0.9, {"title": "Refunds"}), Document("kb-2", "Shipping is free.", 0.5)]


def test_documents_are_shown_by_id_and_text_nearest_first() -> None:
    assert documents_text(KB) == "[kb-1] Refunds take 5 days.\n\n[kb-2] Shipping is free."
    assert documents_text([]) == ""


def test_documents_are_bounded_and_the_rest_is_counted() -> None:
    long = Document("kb-long", "y" * (MAX_DOCUMENT_CHARS + 500), 0.9)
    assert documents_text([long]) == "[kb-long] " + "y" * MAX_DOCUMENT_CHARS + " [...]"
    many = [Document(f"kb-{i}", "z" * 3000, 0.5) for i in range(10)]
    text = documents_text(many)
    assert len(text) <= MAX_DOCUMENTS_CHARS
    assert text.startswith("[kb-0] ") and "[kb-4]" in text and "[kb-5]" not in text  # whole entries, nearest first
    assert text.endswith("(5 more retrieved documents not shown)")
    assert documents_text([Document("k" * 1000, "t", 0.1)]) == "[" + "k" * 256 + "] t"


def test_a_rubric_judge_sees_the_documents_before_the_answer() -> None:
    messages = rubric_messages("Grounded in the documents.", BODY, "Refunds take 5 days [kb-1].", documents_text(KB))
    assert messages[0]["content"] == RUBRIC_SYSTEM_WITH_DOCUMENTS != RUBRIC_SYSTEM
    text = user_text(messages)
    assert read_section(text, DOCUMENTS) == "[kb-1] Refunds take 5 days.\n\n[kb-2] Shipping is free."
    assert text.index(section(CONVERSATION, "user: How do I get a refund?")) < text.index(f"[The Start of {DOCUMENTS}]")
    assert text.index(f"[The End of {DOCUMENTS}]") < text.index(f"[The Start of {ANSWER}]")
    assert read_section(text, ANSWER) == "Refunds take 5 days [kb-1]."


def test_without_documents_the_prompt_is_as_it_was() -> None:
    assert rubric_messages("c", BODY, "a", "") == rubric_messages("c", BODY, "a")
    assert DOCUMENTS not in user_text(rubric_messages("c", BODY, "a"))
    messages = pairwise_messages("c", BODY, "a", "b")
    assert messages[0]["content"] == PAIRWISE_SYSTEM and "Retrieved Documents" not in user_text(messages)


def test_a_pairwise_judge_sees_each_answers_own_documents() -> None:
    stable, candidate = documents_text(KB[:1]), documents_text(KB[1:])
    messages = pairwise_messages("c", BODY, "stable answer", "candidate answer", stable, candidate)
    assert messages[0]["content"] == PAIRWISE_SYSTEM_WITH_DOCUMENTS
    text = user_text(messages)
    assert read_section(text, DOCUMENTS_A) == "[kb-1] Refunds take 5 days."
    assert read_section(text, DOCUMENTS_B) == "[kb-2] Shipping is free."
    order = [text.index(f"[The Start of {name}]") for name in (DOCUMENTS_A, ANSWER_A, DOCUMENTS_B, ANSWER_B)]
    assert order == sorted(order)
    assert read_section(text, DOCUMENTS) is None  # the rubric's section name is no prefix of these


def test_a_pair_where_one_side_retrieved_nothing_says_so_on_that_side() -> None:
    """Both sides get the section, so swapping the answers swaps everything about them (the position check)."""
    first = user_text(pairwise_messages("c", BODY, "stable", "candidate", "", documents_text(KB)))
    swapped = user_text(pairwise_messages("c", BODY, "candidate", "stable", documents_text(KB), ""))
    assert read_section(first, DOCUMENTS_A) == NO_DOCUMENTS and read_section(first, DOCUMENTS_B) == documents_text(KB)
    assert read_section(swapped, DOCUMENTS_A) == documents_text(KB) and read_section(swapped, DOCUMENTS_B) == NO_DOCUMENTS


def test_answers_are_cut_to_the_checked_length() -> None:
    text = user_text(rubric_messages("c", BODY, "z" * (MAX_ANSWER_CHARS + 100)))
    assert read_section(text, ANSWER) == "z" * MAX_ANSWER_CHARS


@pytest.mark.parametrize(
    "text", ["", "one line", "two\nlines", "  spaces kept  ", "[[9]] looks like a verdict", "ünïcödé"]
)
def test_read_section_round_trips(text: str) -> None:
    prompt = "\n\n".join((section(CRITERIA, "c"), section(ANSWER, text), section(ANSWER_B, "b")))
    assert read_section(prompt, ANSWER) == text
    assert read_section(prompt, CRITERIA) == "c"
    assert read_section(prompt, "Missing") is None
    assert read_section(f"[The Start of {ANSWER}]\nno end", ANSWER) is None


def test_request_body_is_deterministic_and_not_streamed() -> None:
    messages = rubric_messages("c", BODY, "a")
    body = request_body("judge", messages)
    assert body == {"model": "judge", "messages": messages, "temperature": 0, "max_tokens": 512, "stream": False}


@pytest.mark.parametrize(
    "response",
    [{}, {"choices": []}, {"choices": [{}]}, {"choices": [{"message": {"content": None}}]}, [], "text", None],
)
def test_reply_text_refuses_malformed(response: Any) -> None:
    with pytest.raises(JudgeReplyError):
        reply_text(response)


def test_reply_text() -> None:
    assert reply_text({"choices": [{"message": {"content": "Rating: [[5]]"}}]}) == "Rating: [[5]]"
