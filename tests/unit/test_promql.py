from datetime import timedelta

import pytest

from inferstack.api.v1alpha1 import Gate, RolloutSpec
from inferstack.core.gates import AGGREGATE
from inferstack.core.promql import (
    ResultError,
    TemplateError,
    default_window,
    escape_regex,
    escape_string,
    gate_queries,
    query_errors,
    render,
    single_value,
)

ARGS = {
    "stack": "chat",
    "namespace": "team-a",
    "revision": "cand1",
    "baseline": "stab1",
    "window": timedelta(minutes=1),
}


@pytest.mark.parametrize(
    ("template", "slice_", "expected"),
    [
        pytest.param(
            'rate(x{stack="{{stack}}",namespace="{{namespace}}",revision="{{revision}}"}[{{window}}])',
            AGGREGATE,
            'rate(x{stack="chat",namespace="team-a",revision="cand1"}[1m])',
            id="labels-and-window",
        ),
        pytest.param('x{revision="{{ baseline }}"}', AGGREGATE, 'x{revision="stab1"}', id="spaces-in-braces"),
        pytest.param('x{slice=~"{{slice}}"}', AGGREGATE, 'x{slice=~".*"}', id="aggregate-slice-matches-all"),
        pytest.param('x{slice=~"{{slice}}"}', "billing", 'x{slice=~"billing"}', id="plain-slice"),
        pytest.param(
            'x{slice=~"{{slice}}"}', "eu.billing", 'x{slice=~"eu\\\\.billing"}', id="dot-is-literal"
        ),
        pytest.param("sum(x)", AGGREGATE, "sum(x)", id="no-placeholders"),
    ],
)
def test_render(template: str, slice_: str, expected: str) -> None:
    assert render(template, slice_=slice_, **ARGS) == expected  # type: ignore[arg-type]


def test_render_escapes_injection() -> None:
    hostile = 'x"} or vector(1) or x{a="'
    out = render('m{stack="{{stack}}"}', **{**ARGS, "stack": hostile}, slice_=AGGREGATE)  # type: ignore[arg-type]
    assert out == 'm{stack="x\\"} or vector(1) or x{a=\\""}'
    # The quote that would close the string is escaped: the matcher's string ends only at the last quote.
    assert out.count('"') - out.count('\\"') == 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param('a"b', 'a\\"b', id="quote"),
        pytest.param("a\\b", "a\\\\b", id="backslash"),
        pytest.param("a\nb", "a\\nb", id="newline"),
        pytest.param("a\x01b", "a\\x01b", id="control"),
    ],
)
def test_escape_string(value: str, expected: str) -> None:
    assert escape_string(value) == expected


def test_escape_regex_escapes_metacharacters_then_string() -> None:
    assert escape_regex("a.b*") == "a\\\\.b\\\\*"


@pytest.mark.parametrize(
    "template",
    [pytest.param("x{a='{{stak}}'}", id="typo"), pytest.param("{{Stack}}", id="case-sensitive")],
)
def test_render_rejects_unknown_placeholder(template: str) -> None:
    with pytest.raises(TemplateError, match="unknown placeholder"):
        render(template, slice_=AGGREGATE, **ARGS)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("interval", "window"),
    [
        pytest.param("30s", timedelta(minutes=1), id="default"),
        pytest.param("10s", timedelta(minutes=1), id="at-least-a-minute"),
        pytest.param("2m", timedelta(minutes=4), id="twice-the-interval"),
    ],
)
def test_default_window(interval: str, window: timedelta) -> None:
    assert default_window(RolloutSpec(analysis_interval=interval)) == window


def test_gate_queries_per_slice() -> None:
    g = Gate.model_validate(
        {
            "name": "judge",
            "slices": ["billing"],
            "prometheus": {
                "query": 'q{r="{{revision}}",s=~"{{slice}}"}',
                "samplesQuery": 'n{r="{{revision}}"}',
            },
            "compare": {"maxRelativeDrop": 0.05},
        }
    )
    qs = gate_queries(
        g, stack="chat", namespace="ns", candidate="c1", stable="s1", window=timedelta(minutes=1)
    )
    assert [(q.slice, q.value, q.baseline, q.samples) for q in qs] == [
        ("billing", 'q{r="c1",s=~"billing"}', 'q{r="s1",s=~"billing"}', 'n{r="c1"}'),
        (AGGREGATE, 'q{r="c1",s=~".*"}', 'q{r="s1",s=~".*"}', 'n{r="c1"}'),
    ]


def test_threshold_gate_has_no_baseline_query() -> None:
    g = Gate.model_validate({"name": "lat", "prometheus": {"query": "q"}, "threshold": {"max": 1}})
    (q,) = gate_queries(g, stack="s", namespace="n", candidate="c", stable="s", window=timedelta(minutes=1))
    assert (q.baseline, q.samples) == (None, None)


@pytest.mark.parametrize(
    ("result", "value"),
    [
        pytest.param([], None, id="no-series-no-data"),
        pytest.param([{"metric": {}, "value": [1700000000.0, "0.93"]}], 0.93, id="one-series"),
        pytest.param([{"metric": {}, "value": [1700000000.0, "NaN"]}], None, id="nan-no-data"),
        pytest.param(
            [{"metric": {}, "value": [1700000000.0, "+Inf"]}], float("inf"), id="inf-kept-for-judge"
        ),
    ],
)
def test_single_value(result: list[dict], value: float | None) -> None:
    assert single_value(result) == value


@pytest.mark.parametrize(
    ("result", "message"),
    [
        pytest.param([{"value": [1, "1"]}, {"value": [1, "2"]}], "returned 2 series", id="many-series"),
        pytest.param([{"value": [1, "abc"]}], "not a number", id="not-a-number"),
        pytest.param([{"values": []}], "unexpected sample", id="range-vector"),
    ],
)
def test_single_value_rejects(result: list[dict], message: str) -> None:
    with pytest.raises(ResultError, match=message):
        single_value(result)


@pytest.mark.parametrize(
    ("query", "samples", "error"),
    [
        pytest.param('sum(rate(x{stack="{{stack}}",slice=~"{{slice}}"}[{{window}}]))', None, "", id="valid"),
        pytest.param("sum(rate(x[{{window}}])", None, "spec.gates[g].prometheus.query: unclosed left parenthesis", id="unbalanced"),
        pytest.param("up", "count(", "spec.gates[g].prometheus.samplesQuery: ", id="bad-samples-query"),
        pytest.param("rate(x[{{window}}]) +", None, "spec.gates[g].prometheus.query: ", id="dangling-operator"),
    ],
)  # fmt: skip
def test_query_errors_parse_each_rendered_template(query: str, samples: str | None, error: str) -> None:
    prometheus = {"query": query} | ({"samplesQuery": samples} if samples else {})
    gate = Gate.model_validate({"name": "g", "prometheus": prometheus, "threshold": {"min": 1}})
    errors = query_errors([gate])
    if not error:
        assert errors == []
    else:
        assert len(errors) == 1 and errors[0].startswith(error), errors
        assert "\n" not in errors[0]
