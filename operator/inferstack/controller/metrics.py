"""The operator's own Prometheus metrics (served by ``--metrics-port``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("inferstack_operator_reconciles_total", "Reconcile passes", ["namespace", "stack"])
RECONCILE_ERRORS = Counter("inferstack_operator_reconcile_errors_total", "Reconcile passes that raised", ["namespace", "stack"])
API_WRITES = Counter("inferstack_operator_api_writes_total", "Writes the operator sent to the API server", ["namespace", "kind", "verb"])
RECONCILE_SECONDS = Histogram("inferstack_operator_reconcile_seconds", "Duration of one reconcile pass")
ROLLBACKS = Counter("inferstack_operator_rollbacks_total", "Rollbacks of a candidate revision", ["namespace", "stack", "reason"])
PROMOTIONS = Counter("inferstack_operator_promotions_total", "Candidates promoted to stable", ["namespace", "stack"])
CANDIDATE_WEIGHT = Gauge("inferstack_operator_candidate_weight", "Percent of users on the candidate", ["namespace", "stack"])

# The last analysis of each stack's rollout, one series per gate and slice
# (slice "" is the aggregate), so a dashboard can draw what status.gates only
# holds for the moment. Set from the decided state after every pass and removed
# when the verdicts go (the rollout ended), so no finished rollout lingers.
GATE_LABELS = ["namespace", "stack", "revision", "gate", "slice"]
GATE_VERDICT = Gauge("inferstack_operator_gate_verdict", "Last verdict per gate and slice: 1 Pass, 0 Inconclusive, -1 Fail", GATE_LABELS)
GATE_VALUE = Gauge("inferstack_operator_gate_value", "Last analysis: the candidate's value (PromQL gate) or mean (evaluator gate)", GATE_LABELS)
GATE_BASELINE = Gauge("inferstack_operator_gate_baseline", "Last analysis: the stable revision's value or mean", GATE_LABELS)
GATE_DELTA = Gauge("inferstack_operator_gate_delta", "Evaluator gates: candidate minus stable", GATE_LABELS)
GATE_DELTA_LOWER = Gauge("inferstack_operator_gate_delta_lower", "Evaluator gates: lower end of the anytime-valid interval", GATE_LABELS)
GATE_DELTA_UPPER = Gauge("inferstack_operator_gate_delta_upper", "Evaluator gates: upper end of the anytime-valid interval", GATE_LABELS)
_GATE_FIELDS = (
    (GATE_VALUE, "value"),
    (GATE_BASELINE, "baseline"),
    (GATE_DELTA, "delta"),
    (GATE_DELTA_LOWER, "delta_lower"),
    (GATE_DELTA_UPPER, "delta_upper"),
)
_VERDICT_VALUE = {"Pass": 1.0, "Inconclusive": 0.0, "Fail": -1.0}
ROLLBACK_CAUSES = ("GateFailed", "ProgressDeadlineExceeded", "Aborted")
_exported: dict[tuple[str, str], set[tuple[Gauge, tuple[str, ...]]]] = {}


def track_stack(namespace: str, stack: str) -> None:
    """Create the stack's event counters at 0, so the first promotion or rollback is an increase
    Prometheus can see (a series that appears at 1 has no increase() until its second sample)."""
    PROMOTIONS.labels(namespace, stack)
    for cause in ROLLBACK_CAUSES:
        ROLLBACKS.labels(namespace, stack, cause)


def export_verdicts(namespace: str, stack: str, revision: str | None, verdicts: Iterable[Any]) -> None:
    """Gauges for ``verdicts`` (core.gates.GateVerdict) of ``revision``; series no longer in them are removed."""
    now: set[tuple[Gauge, tuple[str, ...]]] = set()
    for v in verdicts if revision else ():
        labels: tuple[str, ...] = (namespace, stack, revision or "", v.gate, v.slice)
        GATE_VERDICT.labels(*labels).set(_VERDICT_VALUE.get(str(v.verdict.value), 0.0))
        now.add((GATE_VERDICT, labels))
        for gauge, attr in _GATE_FIELDS:
            if (x := getattr(v, attr)) is not None:
                gauge.labels(*labels).set(x)
                now.add((gauge, labels))
    for gauge, gone in _exported.get((namespace, stack), set()) - now:
        with contextlib.suppress(KeyError):
            gauge.remove(*gone)
    if now:
        _exported[(namespace, stack)] = now
    else:
        _exported.pop((namespace, stack), None)


def forget_stack(namespace: str, stack: str) -> None:
    """A deleted stack: its gate series go (its counters stay, as counters do)."""
    export_verdicts(namespace, stack, None, ())

NOTIFICATIONS = Counter("inferstack_operator_notifications_total", "Webhook deliveries by notification kind and result (delivered, retried)", ["kind", "result"])
NOTIFICATIONS_DROPPED = Counter(
    "inferstack_operator_notifications_dropped_total",
    "Webhook deliveries given up: queue_full, attempts (retries exhausted), undeliverable (4xx, Secret key missing)",
    ["reason"],
)

# Leader election (controller/leader.py): one series per process, so two replicas are told apart by identity.
LEADER = Gauge("inferstack_operator_leader", "1 while this replica holds the lease and reconciles, 0 on standby", ["identity"])
LEASE_WRITES = Counter("inferstack_operator_lease_writes_total", "Writes to the leader-election Lease (renewals included)", ["verb"])
LEADERSHIP_CHANGES = Counter("inferstack_operator_leadership_changes_total", "Leadership gained or lost by this replica", ["change"])
WRITES_FENCED = Counter(
    "inferstack_operator_writes_fenced_total", "Writes refused before they were sent: this replica no longer held the lease (counted in api_writes_total too)"
)
