"""The operator's own Prometheus metrics (served by ``--metrics-port``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("inferstack_operator_reconciles_total", "Reconcile passes", ["namespace", "stack"])
RECONCILE_ERRORS = Counter("inferstack_operator_reconcile_errors_total", "Reconcile passes that raised", ["namespace", "stack"])
API_WRITES = Counter("inferstack_operator_api_writes_total", "Writes the operator sent to the API server", ["namespace", "kind", "verb"])
RECONCILE_SECONDS = Histogram("inferstack_operator_reconcile_seconds", "Duration of one reconcile pass")
ROLLBACKS = Counter("inferstack_operator_rollbacks_total", "Rollbacks of a candidate revision", ["namespace", "stack", "reason"])
PROMOTIONS = Counter("inferstack_operator_promotions_total", "Candidates promoted to stable", ["namespace", "stack"])
CANDIDATE_WEIGHT = Gauge("inferstack_operator_candidate_weight", "Percent of users on the candidate", ["namespace", "stack"])
