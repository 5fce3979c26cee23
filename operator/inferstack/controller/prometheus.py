"""Prometheus I/O for gates: run the rendered queries, hand the numbers to core/gates.py.

Everything that can go wrong here (unreachable server, timeout, HTTP error, a
result that is not one number) becomes a ``Measurement`` with ``error`` set,
which the gate core judges Inconclusive: a Prometheus outage holds a rollout,
it never promotes or rolls back one.

The narrow ``InstantQuery`` interface (one method) is what the rest of the
operator depends on, so unit tests use a tiny fake instead of a server.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import requests
from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from inferstack.api.v1alpha1 import InferenceStackSpec
from inferstack.core import evaluation
from inferstack.core.gates import GateVerdict, Measurement, evaluate_gates, evaluations
from inferstack.core.promql import ResultError, TemplateError, default_window, gate_queries, single_value
from inferstack.core.status import one_line

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT_SECONDS = 10.0
# Queries in flight per analysis: 32 gates x 64 slices x 3 queries must not flood Prometheus.
MAX_CONCURRENT_QUERIES = 8


class QueryError(Exception):
    """A query could not be answered; the message says why, for the gate verdict."""


class InstantQuery(Protocol):
    async def instant(self, query: str, at: datetime | None = None) -> Sequence[dict[str, Any]]:
        """``data.result`` of an instant query evaluated at ``at`` (default: the server's now).

        Raises ``QueryError`` on any failure.
        """
        ...


class PrometheusClient:
    """``InstantQuery`` over prometheus-api-client, off the event loop."""

    def __init__(
        self, url: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS, headers: dict[str, str] | None = None
    ):
        self.timeout = timeout
        # The library is synchronous (requests); one connection pool per client.
        # No retries: an analysis runs again every analysisInterval anyway, and
        # retries would stretch one analysis far beyond ``timeout``.
        self._conn = PrometheusConnect(url=url, headers=headers, retry=Retry(total=0))

    async def instant(self, query: str, at: datetime | None = None) -> Sequence[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        params = {"time": f"{at.timestamp():.3f}"} if at is not None else None
        call = loop.run_in_executor(None, lambda: self._conn.custom_query(query, params=params, timeout=self.timeout))
        try:
            # The HTTP timeout bounds each request; wait_for also bounds DNS and retries.
            return await asyncio.wait_for(call, timeout=self.timeout + 1)
        except Exception as exc:  # a timeout, requests' and the library's errors alike: all mean "no data"
            log.debug("prometheus query failed: %s: %r", query, exc)
            raise QueryError(describe(exc, self.timeout)) from exc


_HTTP_STATUS = re.compile(r"HTTP Status Code (\d+)")
_ERROR_FIELD = re.compile(r'"error"\s*:\s*"((?:[^"\\]|\\.)*)"')


def describe(exc: Exception, timeout: float) -> str:
    """A failed query in one short line for a verdict (and so for ``status.message``).

    Never the client's exception text: it repeats the URL with the whole
    query URL-encoded, which is noise in ``kubectl get -o wide``.
    """
    if isinstance(exc, TimeoutError | requests.exceptions.Timeout):
        return f"prometheus did not answer within {timeout:g}s"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "prometheus is unreachable"
    text = str(exc)
    if status := _HTTP_STATUS.search(text):
        error = _ERROR_FIELD.search(text)
        detail = f": {error.group(1)}" if error else ""
        return one_line(f"prometheus answered HTTP {status.group(1)}{detail}", 200)
    return f"prometheus query failed ({type(exc).__name__})"


async def _number(client: InstantQuery, query: str | None, at: datetime | None) -> float | None:
    if query is None:
        return None
    try:
        return single_value(await client.instant(query, at))
    except ResultError as exc:
        log.debug("unusable result of %s: %s", query, exc)
        raise QueryError(str(exc)) from exc


async def _measure(
    client: InstantQuery,
    limit: asyncio.Semaphore,
    at: datetime | None,
    value: str,
    baseline: str | None,
    samples: str | None,
) -> Measurement:
    """The three numbers behind one evaluation; any failure makes the whole one an error."""
    try:
        async with limit:
            v = await _number(client, value, at)
            b = await _number(client, baseline, at)
            n = await _number(client, samples, at)
    except QueryError as exc:
        return Measurement(error=str(exc))
    return Measurement(value=v, baseline=b, samples=n)


async def analyse(
    spec: InferenceStackSpec,
    stack: str,
    namespace: str,
    stable_rev: str,
    candidate_rev: str,
    client: InstantQuery,
    window: timedelta | None = None,
    at: datetime | None = None,
    step_kind: str | None = None,
) -> list[GateVerdict]:
    """Every gate's verdicts for the candidate, each slice and the aggregate.

    Every query is evaluated at ``at`` (the server's now when None) over
    ``window``, which defaults to ``default_window(spec.rollout)``: twice the
    analysis interval, at least one minute. One evaluation time for all of
    them makes the analysis cover exactly ``[at - window, at]``, however long
    the queries take. Queries run concurrently; a gate whose template does
    not render is Inconclusive with the template error. ``step_kind``
    (None: every gate) leaves out the gates not judged in that kind of step.
    """
    window = window or default_window(spec.rollout)
    measurements: dict[tuple[str, str], Measurement] = {}
    limit = asyncio.Semaphore(MAX_CONCURRENT_QUERIES)
    jobs = []
    # Only the gates judged in this kind of step (evaluation.judged_in): a
    # pairwise judge has no pairs in a canary, feedback none in a shadow.
    prometheus_gates = [g for g in spec.gates if g.prometheus is not None and evaluation.judged_in(spec, g, step_kind)]
    for gate in prometheus_gates:
        try:
            queries = gate_queries(
                gate,
                stack=stack,
                namespace=namespace,
                candidate=candidate_rev,
                stable=stable_rev,
                window=window,
            )
        except TemplateError as exc:
            # evaluate_gates marks unmeasured evaluations; give them the real reason.
            for slice_ in evaluations(gate):
                measurements[(gate.name, slice_)] = Measurement(error=f"template error: {exc}")
            continue
        for q in queries:
            jobs.append(((q.gate, q.slice), _measure(client, limit, at, q.value, q.baseline, q.samples)))
    # Evaluator gates: the operator writes the queries (core/evaluation.py).
    eval_queries = evaluation.evaluator_queries(
        spec, stack=stack, namespace=namespace, candidate=candidate_rev, stable=stable_rev, window=window, step_kind=step_kind
    )
    texts = evaluation.all_queries(eval_queries)
    results, answers = await asyncio.gather(
        asyncio.gather(*(job for _, job in jobs)),
        asyncio.gather(*(_answer(client, limit, at, q) for q in texts)),
    )
    measurements.update(zip((key for key, _ in jobs), results, strict=True))
    verdicts = evaluate_gates(prometheus_gates, measurements)
    verdicts += evaluation.evaluate(spec, eval_queries, dict(zip(texts, answers, strict=True)))
    order = {g.name: i for i, g in enumerate(spec.gates)}
    return sorted(verdicts, key=lambda v: order[v.gate])  # spec order; stable within a gate


async def _answer(client: InstantQuery, limit: asyncio.Semaphore, at: datetime | None, query: str) -> float | str | None:
    """One number, None when there is no series, or the error as text (evaluation.evaluate's shape)."""
    try:
        async with limit:
            return await _number(client, query, at)
    except QueryError as exc:
        return str(exc)
