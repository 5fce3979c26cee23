"""PromQL for gates: template rendering, per-slice expansion, result parsing.

Placeholders (``{{ name }}``, spaces optional):

==============  ===============================================================
``stack``       the InferenceStack's name
``namespace``   its namespace
``revision``    the revision being measured: the candidate, or the stable one
                when the baseline is measured
``baseline``    always the stable revision
``slice``       a **regular expression** matching the slice: the slice name
                escaped (``a.b`` -> ``a\\\\.b``), or ``.*`` for the aggregate.
                Use it with ``=~``: ``slice=~"{{slice}}"``
``window``      the analysis window as a PromQL duration, e.g. ``1m``
==============  ===============================================================

Values are escaped for a double-quoted PromQL string, so a value can never end
the string it is placed in and inject a matcher or an expression. An unknown
placeholder is an error rather than left verbatim: a typo must not silently
become a query that matches nothing (and so holds the rollout forever).

Pure: no Prometheus client here; ``controller/prometheus.py`` runs the queries.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import promql_parser

from inferstack.api import rules
from inferstack.api.v1alpha1 import Gate, RolloutSpec
from inferstack.core.durations import format_duration, parse_duration
from inferstack.core.gates import AGGREGATE, evaluations

# One definition, in the API: the CRD's CEL rules refuse what render() cannot fill.
PLACEHOLDERS: Final = frozenset(rules.PLACEHOLDERS)
_PLACEHOLDER: Final = rules.PLACEHOLDER_RE
_REGEX_SPECIAL: Final = re.compile(r"([\\.+*?()|\[\]{}^$])")
MIN_WINDOW: Final = timedelta(minutes=1)


class TemplateError(ValueError):
    """A gate's PromQL template cannot be rendered."""


def escape_string(value: str) -> str:
    """``value`` as the inside of a double-quoted PromQL string (Go string escapes)."""
    out = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    # Any other control character could confuse the lexer; spell it as a \x escape.
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 0x20 else c for c in out)


def escape_regex(value: str) -> str:
    """A RE2 pattern matching exactly ``value``, escaped for a PromQL string."""
    return escape_string(_REGEX_SPECIAL.sub(r"\\\1", value))


def slice_pattern(slice_: str) -> str:
    """The ``{{slice}}`` value: the slice as a regex, or ``.*`` for the aggregate."""
    return ".*" if slice_ == AGGREGATE else escape_regex(slice_)


def default_window(rollout: RolloutSpec, min_window: timedelta = MIN_WINDOW) -> timedelta:
    """Analysis window: twice the analysis interval, at least ``min_window``.

    Twice the interval so consecutive analyses overlap and a short scrape gap
    does not empty the window; at least ``min_window`` (one minute unless the
    operator is configured for faster scrapes) because ``rate()`` over less
    than a few scrape intervals (15-30 s) returns nothing. The rollout clips
    it to the current step (``rollout.analysis_window``).
    """
    return max(parse_duration(rollout.analysis_interval) * 2, min_window)


def render(
    template: str,
    *,
    stack: str,
    namespace: str,
    revision: str,
    baseline: str,
    slice_: str,
    window: timedelta,
) -> str:
    """The template with every placeholder replaced; ``slice_`` is a slice name or AGGREGATE."""
    if window < timedelta(milliseconds=1):
        raise TemplateError(f"window {window} is shorter than 1ms")
    values = {
        "stack": escape_string(stack),
        "namespace": escape_string(namespace),
        "revision": escape_string(revision),
        "baseline": escape_string(baseline),
        "slice": slice_pattern(slice_),
        # format_duration yields whole units only (1h30m, 500ms), which PromQL accepts.
        "window": format_duration(window),
    }

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in PLACEHOLDERS:
            raise TemplateError(
                f"unknown placeholder {{{{{name}}}}}; known: {', '.join(sorted(PLACEHOLDERS))}"
            )
        return values[name]

    return _PLACEHOLDER.sub(substitute, template)


@dataclass(frozen=True)
class GateQueries:
    """The queries behind one (gate, slice) evaluation; None where not needed."""

    gate: str
    slice: str
    value: str
    baseline: str | None
    samples: str | None


def gate_queries(
    gate: Gate, *, stack: str, namespace: str, candidate: str, stable: str, window: timedelta
) -> list[GateQueries]:
    """One entry per evaluation (each slice, then the aggregate).

    The value query is rendered with ``revision`` = candidate; a compare gate
    renders the same template again with ``revision`` = stable for the
    baseline; the samples query counts the candidate's samples. Only for a
    ``prometheus`` gate (an evaluator gate's queries are core/evaluation.py's).
    """
    prometheus = gate.prometheus
    assert prometheus is not None, f"gate {gate.name} has no prometheus query"
    out = []
    for slice_ in evaluations(gate):

        def fill(template: str, revision: str, slice_: str = slice_) -> str:
            return render(
                template,
                stack=stack,
                namespace=namespace,
                revision=revision,
                baseline=stable,
                slice_=slice_,
                window=window,
            )

        samples = prometheus.samples_query
        out.append(
            GateQueries(
                gate=gate.name,
                slice=slice_,
                value=fill(prometheus.query, candidate),
                baseline=fill(prometheus.query, stable) if gate.compare is not None else None,
                samples=fill(samples, candidate) if samples else None,
            )
        )
    return out


class ResultError(ValueError):
    """A query result that is not one number."""


def single_value(result: Sequence[dict[str, Any]]) -> float | None:
    """The number in an instant-query result (``data.result`` of a vector or scalar).

    No series means no data (None, which the gate judges Inconclusive). More
    than one series is an error: the template must aggregate (``sum``,
    ``avg``, ``histogram_quantile``) to one value, and picking one series at
    random would judge the wrong thing.
    """
    if not result:
        return None
    if len(result) > 1:
        raise ResultError(f"query returned {len(result)} series; aggregate it to one (sum, avg, ...)")
    sample = result[0].get("value")
    if not isinstance(sample, (list, tuple)) or len(sample) != 2:
        raise ResultError(f"unexpected sample {sample!r}")
    try:
        value = float(sample[1])  # Prometheus sends numbers as strings, including "NaN" and "+Inf"
    except (TypeError, ValueError) as exc:
        raise ResultError(f"sample value {sample[1]!r} is not a number") from exc
    return value if not math.isnan(value) else None


def query_errors(gates: Sequence[Gate]) -> list[str]:
    """Why a gate's queries cannot run, one line each; empty when they all parse.

    What the CRD's CEL rules cannot see: each template is rendered with
    sample values and parsed as PromQL here, at the first reconcile, so a
    typo turns the stack InvalidSpec at once instead of holding its first
    rollout Inconclusive forever.
    """
    errors = []
    for gate in gates:
        if gate.prometheus is None:
            continue  # an evaluator gate: the operator writes its queries
        templates = [("query", gate.prometheus.query)]
        if gate.prometheus.samples_query:
            templates.append(("samplesQuery", gate.prometheus.samples_query))
        for field_, template in templates:
            where = f"spec.gates[{gate.name}].prometheus.{field_}"
            try:
                text = render(
                    template, stack="s", namespace="ns", revision="r", baseline="b", slice_=AGGREGATE, window=MIN_WINDOW
                )
                promql_parser.parse(text)
            except (TemplateError, ValueError) as exc:
                errors.append(f"{where}: {' '.join(str(exc).split())}")
    return errors
