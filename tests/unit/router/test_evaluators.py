"""Declared rule-check evaluators: one sample per answer (1 pass, 0 fail) or none when they do not apply."""

from __future__ import annotations

from typing import Any

import pytest

from inferstack.api.v1alpha1 import Evaluator, RuleCheck
from inferstack.router.evaluators import AnswerView, Evaluators, ToolCall, compile_rule, tool_validators

TOOLS = [
    {"type": "function", "function": {"name": "lookup_order", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string", "pattern": "^[0-9]{6}$"}}, "required": ["order_id"],
        "additionalProperties": False}}},
]  # fmt: skip
JSON_ASKED = {"response_format": {"type": "json_object"}}


def rule(**kw: Any) -> RuleCheck:
    return RuleCheck.model_validate(kw)


def answer(text: str = "", *, truncated: bool = False, length: int | None = None, calls: tuple[ToolCall, ...] = (),
           retrieved: tuple[str, ...] = ()) -> AnswerView:
    return AnswerView(text, truncated, len(text) if length is None else length, calls, retrieved)


@pytest.mark.parametrize(
    ("spec", "body", "ans", "expected"),
    [
        pytest.param({"refusal": {}}, {}, answer("Open Orders and press Track."), 1.0, id="refusal-pass"),
        pytest.param({"refusal": {}}, {}, answer("I\u2019m sorry, but I cannot discuss refunds."), 0.0, id="refusal-typographic-apostrophe"),
        pytest.param({"refusal": {"markers": ["no comment"]}}, {}, answer("No comment."), 0.0, id="refusal-own-markers"),
        pytest.param({"refusal": {"markers": ["no comment"]}}, {}, answer("I cannot say."), 1.0, id="refusal-own-markers-replace-defaults"),
        pytest.param({"json": {}}, JSON_ASKED, answer('```json\n{"a": 1}\n```'), 1.0, id="json-fenced"),
        pytest.param({"json": {}}, JSON_ASKED, answer('{"a": '), 0.0, id="json-broken"),
        pytest.param({"json": {}}, {}, answer("plain"), None, id="json-not-asked"),
        pytest.param({"json": {}}, JSON_ASKED, answer('{"a": 1', truncated=True), None, id="json-truncated"),
        pytest.param({"jsonSchema": {"type": "object", "required": ["refund_days"]}}, {}, answer('{"refund_days": 30}'), 1.0, id="schema-pass"),
        pytest.param({"jsonSchema": {"type": "object", "required": ["refund_days"]}}, {}, answer('{"days": 30}'), 0.0, id="schema-fail"),
        pytest.param({"jsonSchema": {"type": "object"}}, {}, answer("not json"), 0.0, id="schema-not-json"),
        pytest.param({"mustMatch": "(?i)within \\d+ days"}, {}, answer("Refunds within 30 days."), 1.0, id="must-match"),
        pytest.param({"mustMatch": "(?i)within \\d+ days"}, {}, answer("Ask support."), 0.0, id="must-match-missing"),
        pytest.param({"mustMatch": "days"}, {}, answer("x" * 10, truncated=True, length=99999), None, id="must-match-maybe-later"),
        pytest.param({"mustNotMatch": "(?i)guarantee"}, {}, answer("We guarantee it."), 0.0, id="must-not-match"),
        pytest.param({"mustNotMatch": "(?i)guarantee"}, {}, answer("Fine."), 1.0, id="must-not-match-absent"),
        pytest.param({"maxLength": 10}, {}, answer("short"), 1.0, id="length-ok"),
        pytest.param({"maxLength": 10}, {}, answer("x" * 5, truncated=True, length=5000), 0.0, id="length-counts-past-the-prefix"),
        pytest.param({"toolArguments": {}}, {}, answer(calls=(ToolCall("lookup_order", '{"order_id": "123456"}'),)), 1.0, id="tool-args-valid"),
        pytest.param({"toolArguments": {}}, {}, answer(calls=(ToolCall("lookup_order", '{"order_id": "12"}'),)), 0.0, id="tool-args-invalid"),
        pytest.param({"toolArguments": {}}, {}, answer(calls=(ToolCall("lookup_order", '{"order_id": '),)), 0.0, id="tool-args-not-json"),
        pytest.param({"toolArguments": {}}, {}, answer(calls=(ToolCall("delete_account", "{}"),)), 0.0, id="tool-not-declared"),
        pytest.param({"toolArguments": {}}, {}, answer("no call"), None, id="tool-args-no-call"),
        pytest.param({"toolArguments": {}}, {}, answer(calls=(ToolCall("lookup_order", '{"order', truncated=True),)), None, id="tool-args-truncated"),
    ],
)  # fmt: skip
def test_one_sample_per_answer(spec: dict[str, Any], body: dict[str, Any], ans: AnswerView, expected: float | None) -> None:
    assert compile_rule(rule(**spec), tool_validators(TOOLS))(body, ans) == expected


def test_run_returns_only_the_evaluators_that_apply() -> None:
    evaluators = [Evaluator.model_validate(e) for e in (
        {"name": "no-refusal", "rule": {"refusal": {}}},
        {"name": "json", "rule": {"json": {}}},
        {"name": "tool-args", "rule": {"toolArguments": {}}},
    )]  # fmt: skip
    compiled = Evaluators.compile(evaluators, TOOLS)
    assert compiled.run({}, answer("I cannot help with that.")) == {"no-refusal": 0.0}
    assert compiled.run(JSON_ASKED, answer('{"ok": true}')) == {"no-refusal": 1.0, "json": 1.0}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param({"mustMatch": "(a"}, "mustMatch is not an RE2 pattern: missing )"),
        pytest.param({"mustNotMatch": "(\\w+)\\1"}, "mustNotMatch is not an RE2 pattern: invalid escape sequence"),
        pytest.param({"jsonSchema": {"type": "nonsense"}}, "jsonSchema is not a JSON Schema"),
        pytest.param({"refusal": {}, "maxLength": 3}, "needs exactly one of refusal, json"),
    ],
)
def test_what_the_router_cannot_compile_is_refused_with_the_spec(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rule(**spec)


def test_a_pathological_pattern_runs_in_linear_time() -> None:
    """(a+)+$ backtracks exponentially in Python's re; RE2 answers at once (the unit tier's 10 s timeout guards it)."""
    score = compile_rule(rule(mustNotMatch="(a+)+$"), {})
    assert score({}, answer("a" * 5000 + "!")) == 1.0


KB = ("kb-12", "kb-7")  # what retrieval gave this answer, nearest first


@pytest.mark.parametrize(
    ("text", "retrieved", "truncated", "expected"),
    [
        pytest.param("Refunds take 5 days [kb-12].", KB, False, 1.0, id="bracketed"),
        pytest.param("See kb-7 for details", KB, False, 1.0, id="the-second-document-counts-too"),
        pytest.param("kb-12", KB, False, 1.0, id="the-whole-answer"),
        pytest.param("(source: kb-12)", KB, False, 1.0, id="in-parentheses"),
        pytest.param("Refunds take 5 days.", KB, False, 0.0, id="no-citation"),
        pytest.param("Refunds take 5 days [kb-123].", KB, False, 0.0, id="a-longer-id-is-another-document"),
        pytest.param("Refunds take 5 days [xkb-12].", KB, False, 0.0, id="inside-a-word"),
        pytest.param("Refunds take 5 days [kb_12].", KB, False, 0.0, id="another-id"),
        pytest.param("Refunds take 5 days [KB-12].", KB, False, 0.0, id="ids-are-case-sensitive"),
        pytest.param("Refunds take 5 days [kb-9].", KB, False, 0.0, id="an-id-that-was-not-retrieved"),
        pytest.param("See [kb-12é].", KB, False, 0.0, id="a-letter-outside-ascii-touches-it"),
        pytest.param("Policy [refund.v2] applies.", ("refund.v2",), False, 1.0, id="dots-in-an-id"),
        pytest.param("Policy [refundXv2] applies.", ("refund.v2",), False, 0.0, id="an-id-is-no-pattern"),
        pytest.param("Policy [a|b] applies.", ("a|b", "(x"), False, 1.0, id="regex-characters-are-literal"),
        pytest.param("Refunds take 5 days [kb-12].", (), False, None, id="nothing-retrieved"),
        pytest.param("Refunds take 5 days [kb-12].", ("", "  "), False, None, id="only-empty-ids"),
        pytest.param("x" * 100, KB, True, None, id="maybe-in-the-part-not-kept"),
        pytest.param("[kb-12] " + "x" * 100, KB, True, 1.0, id="found-in-the-kept-part"),
        pytest.param("[" + "k" * 300 + "]", ("k" * 300,), False, None, id="an-id-too-long-to-look-for"),
    ],
)  # fmt: skip
def test_cites_retrieved(text: str, retrieved: tuple[str, ...], truncated: bool, expected: float | None) -> None:
    score = compile_rule(rule(citesRetrieved={}), {})
    assert score({}, answer(text, truncated=truncated, retrieved=retrieved)) == expected


def test_cites_retrieved_runs_in_linear_time_on_hostile_ids() -> None:
    """Overlapping ids over an answer made of them: a find-and-check loop is quadratic here, RE2 is not."""
    ids = tuple("a" * k for k in range(1, 101))
    score = compile_rule(rule(citesRetrieved={}), {})
    assert score({}, answer("a" * 8192, retrieved=ids)) == 0.0  # no id stands alone


class SeenAnswer:
    """What ``Evaluators.score`` reads of a ``proxy.Answer``."""

    def __init__(self, text: str) -> None:
        self.text, self.truncated, self.length, self.tool_calls = text, False, len(text), ()


def test_score_passes_the_retrieved_ids_to_the_rules() -> None:
    compiled = Evaluators.compile([Evaluator.model_validate({"name": "cites", "rule": {"citesRetrieved": {}}})], [])
    assert compiled.score({}, SeenAnswer("See [kb-12]."), ("kb-12",)) == {"cites": 1.0}
    assert compiled.score({}, SeenAnswer("See [kb-12]."), ("kb-3",)) == {"cites": 0.0}
    assert compiled.score({}, SeenAnswer("See [kb-12].")) == {}  # nothing retrieved: no sample


@pytest.mark.parametrize(
    ("spec", "retrieved", "expected"),
    [
        pytest.param({"mustMatch": "kb"}, (), 1.0, id="must-match"),
        pytest.param({"mustNotMatch": "kb"}, (), 0.0, id="must-not-match"),
        pytest.param({"citesRetrieved": {}}, ("kb-12",), 1.0, id="cites-retrieved"),
    ],
)
def test_a_lone_surrogate_in_an_answer_is_searched_not_raised(spec: dict[str, Any], retrieved: tuple[str, ...],
                                                               expected: float) -> None:
    """A model may write "\\ud800" in its JSON; json decodes it to a lone surrogate RE2 cannot encode."""
    text = "odd \ud800 text, see [kb-12] \U0001f600"
    assert compile_rule(rule(**spec), {})({}, answer(text, retrieved=retrieved)) == expected


def test_pattern_search_answers_as_re2_search_does() -> None:
    """The checks' match test (RE2's Match on the UTF-8 text, no match object) finds what ``search`` finds."""
    from inferstack.router.evaluators import _re2, _search, _searcher

    patterns = ["(?i)refund (window|policy)", "(?i)guarantee[ds]?", "^$", "", "a*", "é+", r"\bword\b", "x$", r"^\s*$",
                "(?:^|[^A-Za-z0-9_])(?:kb-1)(?:[^A-Za-z0-9_]|$)"]
    texts = ["", "refund policy", "Refund Window x", "no", "aaaa", "ééé", "a word here", "see kb-1.", "kb-12", "x", "   ",
             "\ud800 refund window", "lone \udfff"]
    for pattern in patterns:
        compiled = _re2(pattern)
        for text in texts:
            expected = compiled.search(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")) is not None
            assert _search(compiled, text) == expected, (pattern, text)
            assert _searcher(compiled)(text) == expected, (pattern, text)  # the mustMatch checks' bound form


def test_the_fast_view_is_the_dataclass() -> None:
    from inferstack.router.evaluators import view

    calls = (ToolCall("f", "{}"),)
    fast, slow = view("text", True, 9, calls, ("kb-1",)), AnswerView("text", True, 9, calls, ("kb-1",))
    assert fast == slow and repr(fast) == repr(slow) and hash(fast) == hash(slow)
    assert vars(fast) == vars(slow)
    with pytest.raises(AttributeError):
        fast.text = "other"  # type: ignore[misc]


def test_refusal_verdicts_follow_each_answer_text() -> None:
    """The refusal checks keep their last verdict by text object: a new text, equal or not, is judged anew."""
    from inferstack.router import checks

    score = compile_rule(rule(refusal={}), {})
    refused, fine = "I'm sorry, but I cannot help with that.", "Your parcel ships today."
    for text, expected in [(refused, 0.0), (refused, 0.0), (fine, 1.0), ("".join(["I'm sorry", ", but no"]), 0.0),
                           (fine, 1.0), ("I\u2019M UNABLE TO say", 0.0), ("x" * 9000 + "i cannot", 1.0)]:
        assert score({}, answer(text)) == expected, text
        assert checks.run_checks({}, text, truncated=False) == {"refusal": expected == 1.0}
    custom = compile_rule(rule(refusal={"markers": ["Nope"]}), {})
    assert custom({}, answer(refused)) == 1.0 and custom({}, answer("nope.")) == 0.0
    assert score({}, answer("nope.")) == 1.0
