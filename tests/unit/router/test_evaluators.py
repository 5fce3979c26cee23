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


def answer(text: str = "", *, truncated: bool = False, length: int | None = None, calls: tuple[ToolCall, ...] = ()) -> AnswerView:
    return AnswerView(text, truncated, len(text) if length is None else length, calls)


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
