"""The Grafana dashboard shipped in the chart, generated from code (``grafana-foundation-sdk``).

Build-time only (the ``dev`` extra): ``make manifests`` writes
``charts/inferstack/dashboards/inferstack.json``, which the chart's
``grafana-dashboard.yaml`` wraps in a ConfigMap labelled for Grafana's
dashboard sidecar; ``make check-manifests`` fails when the committed file is
not what this module generates. Nobody edits the JSON by hand.

Every query is listed in ``PANELS`` (and ``ANNOTATIONS``) as plain strings, so
``tests/e2e/test_dashboard_e2e.py`` runs each one on a real Prometheus that
scraped a real rollout and checks it returns data.

Metric sources: the router (traffic, latency, errors, evaluator samples and
judged pairs), the operator (candidate weight, promotions, rollbacks and the
last analysis per gate and slice) and vLLM. vLLM pods carry no stack label of
their own: the PodMonitor in docs/operations.md copies the pods'
``inferstack.dev/stack`` and ``inferstack.dev/revision`` labels onto their
series (``podTargetLabels``), as ``inferstack_dev_stack`` and ``inferstack_dev_revision``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as pb
from grafana_foundation_sdk.builders import statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "charts" / "inferstack" / "dashboards" / "inferstack.json"
UID = "inferstack-stack"
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

# The stack chosen by the template variables; every query is narrowed by it.
STACK = 'namespace="$namespace",stack="$stack"'
VLLM = 'namespace="$namespace",inferstack_dev_stack="$stack"'
RATE = "$__rate_interval"


def _rate(metric: str, by: str, where: str = STACK) -> str:
    return f"sum by ({by}) (rate({metric}{{{where}}}[{RATE}]))"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # or "verdicts": a state timeline of Pass/Inconclusive/Fail
    stacked: bool = False


CLIENT_REQUESTS = f'inferstack_router_requests_total{{{STACK},role!="shadow"}}'

PANELS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    ("Rollout", (
        Panel("Traffic share per revision",
              "Share of client requests answered by each revision and role (stable, candidate), from the routers.",
              "percentunit",
              (Query(f"sum by (revision, role) (rate({CLIENT_REQUESTS}[{RATE}]))"
                     f" / scalar(sum(rate({CLIENT_REQUESTS}[{RATE}])))", "{{role}} {{revision}}"),),
              stacked=True),
        Panel("Shadow mirror rate",
              "Requests mirrored to the candidate during shadow steps (answers discarded).",
              "reqps",
              (Query(_rate("inferstack_router_requests_total", "revision", f'{STACK},role="shadow"'), "shadow {{revision}}"),)),
        Panel("Candidate weight decided by the operator",
              "The percent of users the operator's last decision sends to the candidate (the plan the routers obey).",
              "percent",
              (Query(f"inferstack_operator_candidate_weight{{{STACK}}}", "candidate weight"),)),
        Panel("Promotions and rollbacks",
              "Decisions of the operator over the dashboard's time range; the annotations mark when they happened.",
              "short",
              (Query(f"sum(increase(inferstack_operator_promotions_total{{{STACK}}}[$__range]))", "promotions"),
               Query(f"sum by (reason) (increase(inferstack_operator_rollbacks_total{{{STACK}}}[$__range]))",
                     "rollbacks: {{reason}}"))),
    )),
    ("Gates", (
        Panel("Gate verdicts per slice",
              "The last analysis of each gate and slice (slice empty: all traffic): Pass, Inconclusive (holds the step) or Fail.",
              "short",
              (Query(f"inferstack_operator_gate_verdict{{{STACK}}}", "{{gate}} {{slice}}"),),
              kind="verdicts"),
        Panel("Evaluator gates: candidate minus stable, with interval",
              "Difference of means per slice and its anytime-valid confidence interval; a gate fails when the "
              "whole interval lies below -margin (above +margin for a LowerIsBetter gate).",
              "short",
              (Query(f"inferstack_operator_gate_delta{{{STACK}}}", "{{gate}} {{slice}} delta"),
               Query(f"inferstack_operator_gate_delta_lower{{{STACK}}}", "{{gate}} {{slice}} lower"),
               Query(f"inferstack_operator_gate_delta_upper{{{STACK}}}", "{{gate}} {{slice}} upper"))),
        Panel("Gate values: candidate and baseline",
              "The measured value of each gate and slice for the candidate and the stable revision (PromQL gates: "
              "the query's value; evaluator gates: each arm's mean).",
              "short",
              (Query(f"inferstack_operator_gate_value{{{STACK}}}", "{{gate}} {{slice}} candidate"),
               Query(f"inferstack_operator_gate_baseline{{{STACK}}}", "{{gate}} {{slice}} baseline"))),
        Panel("Evaluator score per revision and slice",
              "Mean evaluator score (rule checks, rubric judges, feedback) from the routers' samples.",
              "percentunit",
              (Query(f"{_rate('inferstack_eval_score_sum_total', 'revision, slice, evaluator')}"
                     f" / {_rate('inferstack_eval_samples_total', 'revision, slice, evaluator')}",
                     "{{evaluator}} {{slice}} {{revision}}"),)),
        Panel("Pairwise judge: pairs, wins and losses per slice",
              "Shadow pairs judged (candidate against stable on the same request) and the candidate's wins and losses.",
              "reqps",
              (Query(_rate("inferstack_eval_pairs_total", "slice"), "pairs {{slice}}"),
               Query(_rate("inferstack_eval_pair_wins_total", "slice"), "wins {{slice}}"),
               Query(_rate("inferstack_eval_pair_losses_total", "slice"), "losses {{slice}}"))),
    )),
    ("Serving", (
        Panel("Router request and error rate per revision",
              "Answers and failed requests per revision (errors by kind); an error series at 0 is drawn while there are none.",
              "reqps",
              (Query(_rate("inferstack_router_requests_total", "revision, role"), "{{role}} {{revision}}"),
               Query(f"{_rate('inferstack_router_errors_total', 'revision, kind')}"
                     f" or (0 * {_rate('inferstack_router_requests_total', 'revision')})",
                     "errors {{kind}} {{revision}}"))),
        Panel("Router latency per revision",
              "p50 and p95 time to the last byte, measured at the router.",
              "s",
              (Query(f"histogram_quantile(0.5, {_rate('inferstack_router_request_duration_seconds_bucket', 'le, revision')})",
                     "p50 {{revision}}"),
               Query(f"histogram_quantile(0.95, {_rate('inferstack_router_request_duration_seconds_bucket', 'le, revision')})",
                     "p95 {{revision}}"))),
        Panel("vLLM time to first token",
              "p95 and p50 time to first token reported by the model servers (vLLM), per revision.",
              "s",
              (Query(f"histogram_quantile(0.95, {_rate('vllm:time_to_first_token_seconds_bucket', 'le, inferstack_dev_revision', VLLM)})",
                     "p95 {{inferstack_dev_revision}}"),
               Query(f"histogram_quantile(0.5, {_rate('vllm:time_to_first_token_seconds_bucket', 'le, inferstack_dev_revision', VLLM)})",
                     "p50 {{inferstack_dev_revision}}"))),
        Panel("vLLM queue depth",
              "Requests waiting for a slot and requests running in the model servers, per revision.",
              "short",
              (Query(f"sum by (inferstack_dev_revision) (vllm:num_requests_waiting{{{VLLM}}})", "waiting {{inferstack_dev_revision}}"),
               Query(f"sum by (inferstack_dev_revision) (vllm:num_requests_running{{{VLLM}}})", "running {{inferstack_dev_revision}}"))),
    )),
)  # fmt: skip

# Promotions and rollbacks drawn on every panel; the counters start at 0 per stack
# (controller/metrics.track_stack), so the first one is an increase too.
ANNOTATIONS: tuple[tuple[str, str, str], ...] = (
    ("Promotions", "green", f"increase(inferstack_operator_promotions_total{{{STACK}}}[1m]) > 0"),
    ("Rollbacks", "red", f"sum by (reason) (increase(inferstack_operator_rollbacks_total{{{STACK}}}[1m])) > 0"),
)

VERDICT_MAPPINGS: list[dm.ValueMapping] = [
    dm.ValueMap(options={
        "1": dm.ValueMappingResult(text="Pass", color="green", index=0),
        "0": dm.ValueMappingResult(text="Inconclusive", color="yellow", index=1),
        "-1": dm.ValueMappingResult(text="Fail", color="red", index=2),
    }),
]  # fmt: skip


def _targets(panel: Panel) -> list[pb.Dataquery]:
    return [
        pb.Dataquery().expr(q.expr).legend_format(q.legend).ref_id(chr(ord("A") + i)).datasource(DS)
        for i, q in enumerate(panel.queries)
    ]


def _panel(panel: Panel) -> timeseries.Panel | statetimeline.Panel:
    built: timeseries.Panel | statetimeline.Panel
    if panel.kind == "verdicts":
        built = statetimeline.Panel().mappings(VERDICT_MAPPINGS).show_value(cm.VisibilityMode.NEVER)
    else:
        built = timeseries.Panel().line_width(1).fill_opacity(10 if not panel.stacked else 40)
        if panel.stacked:
            built = built.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
    built = built.title(panel.title).description(panel.description).unit(panel.unit).datasource(DS).height(8).span(12)
    for target in _targets(panel):
        built = built.with_target(target)
    return built


def build() -> dict:
    """The dashboard as Grafana's JSON model."""
    d = (
        db.Dashboard("inferstack: rollouts")
        .uid(UID)
        .tags(["inferstack"])
        .description("One InferenceStack: traffic per revision, gates per slice, promotions and rollbacks, serving.")
        .time("now-3h", "now")
        .refresh("30s")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(db.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(
            db.QueryVariable("namespace").label("Namespace").datasource(DS)
            .query("label_values(inferstack_router_requests_total, namespace)")
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
        )
        .with_variable(
            db.QueryVariable("stack").label("Stack").datasource(DS)
            .query('label_values(inferstack_router_requests_total{namespace="$namespace"}, stack)')
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
        )
    )  # fmt: skip
    for name, color, expr in ANNOTATIONS:
        d = d.annotation(db.AnnotationQuery().name(name).datasource(DS).enable(True).icon_color(color).expr(expr))
    for row, panels in PANELS:
        d = d.with_row(db.Row(row))
        for panel in panels:
            d = d.with_panel(_panel(panel))
    model: dict = json.loads(json.dumps(d.build(), cls=JSONEncoder))
    return model


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def all_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel query and annotation, for tests."""
    out = [(f"{row} / {p.title} / {q.legend}", q.expr) for row, panels in PANELS for p in panels for q in p.queries]
    out += [(f"annotation {name}", expr) for name, _, expr in ANNOTATIONS]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inferstack.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help=f"fail when {OUTPUT.relative_to(REPO)} differs from the generated one")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(REPO)} is not what inferstack.dashboard generates: run `make manifests`", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
