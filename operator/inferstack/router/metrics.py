"""The router's Prometheus metrics; the label set is what gates query by."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.values import MutexValue

# Revision labels: namespace, stack, revision, role (stable|candidate|shadow), slice.
LABELS = ("namespace", "stack", "revision", "role", "slice")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Labels(NamedTuple):
    namespace: str
    stack: str
    revision: str
    role: str
    slice: str


class SliceLabels:
    """Maps a client's slice header to a label value from a declared list, never from the client.

    The allowlist is the router's ``--slices``, set by the platform team. A
    declared value is its own label; any other value is "other", and no header
    (or no allowlist at all) is "default". Nothing is learnt from traffic: a
    client can neither add a series nor push a real slice out of the list.
    """

    def __init__(self, allowlist: Iterable[str] = (), default: str = "default") -> None:
        self.allowlist = frozenset(allowlist)
        self.default = default

    def label(self, header_value: str | None) -> str:
        value = (header_value or "").strip()
        if not value or not self.allowlist:
            return self.default
        return value if value in self.allowlist else "other"


class RouterMetrics:
    """One registry per router app, so tests can run several routers in one process."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("inferstack_router_requests", "Requests answered, by serving revision.", LABELS, registry=r)
        self.errors = Counter("inferstack_router_errors", "Failed requests by kind.", (*LABELS, "kind"), registry=r)
        self.duration = Histogram(
            "inferstack_router_request_duration_seconds", "Time until the last byte.", LABELS, registry=r, buckets=_LATENCY_BUCKETS
        )
        self.ttft = Histogram(
            "inferstack_router_time_to_first_token_seconds",
            "Time until the first upstream body byte (the first SSE chunk when streaming).",
            LABELS,
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.prompt_tokens = Counter("inferstack_router_prompt_tokens", "Prompt tokens reported by backends.", LABELS, registry=r)
        self.completion_tokens = Counter(
            "inferstack_router_completion_tokens", "Completion tokens reported by backends.", LABELS, registry=r
        )
        self.cache_hits = Counter("inferstack_router_cache_hits", "Answers served from the response cache.", LABELS, registry=r)
        self.checks = Counter(
            "inferstack_router_check", "Online checks on answers.", (*LABELS, "check", "result"), registry=r
        )
        self.quality = Histogram(
            "inferstack_router_quality_score", "Per-answer eval score in 0..1.", LABELS, registry=r, buckets=(0.0, 0.25, 0.5, 0.75, 1.0)
        )
        # The one shape of every evaluator's samples: count, sum, sum of squares,
        # from which a gate gets both arms' means and variances (core/sequential.py).
        eval_labels = (*LABELS, "evaluator")
        self.eval_samples = Counter("inferstack_eval_samples", "Evaluator samples (answers scored).", eval_labels, registry=r)
        self.eval_sum = Counter("inferstack_eval_score_sum", "Sum of evaluator scores.", eval_labels, registry=r)
        self.eval_squares = Counter("inferstack_eval_score_squares_sum", "Sum of squared evaluator scores.", eval_labels, registry=r)
        # A pairwise judge's outcomes per shadow pair, with the stable revision
        # it was compared with: pairs, candidate wins, candidate losses (the
        # rest are ties). Counters only go up, so d in -1..1 is kept as two
        # counts: S = wins - losses and, as d² is 1 unless a tie, Q = wins + losses.
        pair_labels = ("namespace", "stack", "revision", "baseline", "slice", "evaluator")
        self.eval_pairs = Counter("inferstack_eval_pairs", "Shadow pairs judged (candidate vs stable, same request).", pair_labels, registry=r)
        self.eval_pair_wins = Counter("inferstack_eval_pair_wins", "Pairs the candidate won in both orders.", pair_labels, registry=r)
        self.eval_pair_losses = Counter("inferstack_eval_pair_losses", "Pairs the candidate lost in both orders.", pair_labels, registry=r)
        self.eval_errors = Counter(
            "inferstack_eval_errors",
            "Evaluator calls that gave no sample (judge down, slow, non-200, no verdict).",
            ("namespace", "stack", "revision", "evaluator", "kind"),
            registry=r,
        )
        self.eval_dropped = Counter(
            "inferstack_eval_dropped",
            "Samples not taken: judge queue full, budget spent, a pair missing its other half.",
            ("namespace", "stack", "evaluator", "reason"),
            registry=r,
        )
        self.shadow_dropped = Counter(
            "inferstack_router_shadow_dropped", "Mirrors dropped because the shadow queue was full.", ("namespace", "stack"), registry=r
        )
        self.fallbacks = Counter(
            "inferstack_router_candidate_fallbacks",
            "Candidate requests retried on stable after a connect error.",
            ("namespace", "stack", "revision"),
            registry=r,
        )
        self.plan_errors = Counter("inferstack_router_plan_errors", "Plans rejected as malformed.", ("source",), registry=r)
        # reason: inferstack.router.planowner.Ignored, a fixed set (never a name from the object).
        self.plans_ignored = Counter(
            "inferstack_router_plans_ignored", "Plan objects not obeyed: not a TrafficPlan its live stack controls.", ("reason",), registry=r
        )
        self.plan_serial = Gauge("inferstack_router_plan_serial", "Serial of the plan in force.", ("namespace", "stack"), registry=r)
        self.shadow_inflight = Gauge("inferstack_router_shadow_inflight", "Mirrored requests in flight.", registry=r)
        # Retrieval (router/retrieval.py), per revision and slice like the answers it feeds.
        # kind is a fixed set (RetrievalFailed's kinds), never text from a store or a client.
        self.retrieval_duration = Histogram(
            "inferstack_router_retrieval_duration_seconds", "Embedding plus vector search, per request.", LABELS,
            registry=r, buckets=_LATENCY_BUCKETS,
        )
        self.retrievals = Counter("inferstack_router_retrievals", "Retrievals that returned (documents or none).", LABELS, registry=r)
        self.retrieved_documents = Counter(
            "inferstack_router_retrieved_documents", "Documents returned by retrievals.", LABELS, registry=r
        )
        self.retrievals_empty = Counter(
            "inferstack_router_retrievals_empty", "Retrievals that returned no document.", LABELS, registry=r
        )
        self.retrieval_errors = Counter(
            "inferstack_router_retrieval_errors", "Retrievals that failed (embedding server, store, timeout), by kind.",
            (*LABELS, "kind"), registry=r,
        )
        self.answered_without_context = Counter(
            "inferstack_router_answered_without_context",
            "Requests sent to the model without documents after a failed retrieval (onFailure: AnswerWithoutContext).",
            LABELS, registry=r,
        )
        self.streams_refused = Counter(
            "inferstack_router_streams_refused", "Streamed requests refused (429): --max-concurrent-streams were open.", registry=r
        )
        # Children per label set, made once (series()): label sets are bounded like the series themselves.
        self._series: dict[Labels, _Series] = {}

    def series(self, labels: Labels) -> _Series:
        """The labelled children of one revision/role/slice, made once: ``Metric.labels()`` costs
        microseconds (argument checks, a lock, a tuple of str()) and an answer updates ~20 series."""
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series(self, labels)
        return series

    def record_answer(
        self,
        labels: Labels,
        *,
        duration: float,
        ttft: float | None,
        prompt_tokens: int,
        completion_tokens: int,
        checks: dict[str, bool],
        score: float,
    ) -> None:
        """Everything measured about one successful answer (client-facing or shadow)."""
        s = self.series(labels)
        s.requests_inc(1)
        s.duration.observe(duration)
        if ttft is not None:
            s.child("ttft").observe(ttft)
        # Token counts come from the model server: a negative one raises through the counter's own inc, as it did.
        if prompt_tokens > 0:
            s.child_inc("prompt_tokens")(prompt_tokens)
        elif prompt_tokens:
            s.child("prompt_tokens").inc(prompt_tokens)
        if completion_tokens > 0:
            s.child_inc("completion_tokens")(completion_tokens)
        elif completion_tokens:
            s.child("completion_tokens").inc(completion_tokens)
        for check, passed in checks.items():
            # Both results' series exist from the first answer checked: a revision that only
            # ever fails must give a pass rate of 0 in PromQL, not "no data".
            ok, failed = s.check_incs(check)
            (ok if passed else failed)(1)
        s.quality.observe(score)

    def record_samples(self, labels: Labels, samples: dict[str, float]) -> None:
        """One answer's evaluator samples (name -> score); evaluators that did not apply are absent."""
        if not samples:
            return
        s = self.series(labels)
        for evaluator, score in samples.items():
            count, total, squares = s.evaluator_incs(evaluator)
            count(1)
            if score < 0:
                s.evaluator(evaluator)[1].inc(score)  # raises, as the counter's own inc does
            total(score)
            squares(score * score)

    def record_pair(self, labels: Labels, baseline: str, evaluator: str, outcome: float) -> None:
        """One judged shadow pair: ``labels`` are the candidate's, ``baseline`` the stable revision."""
        key = (labels.namespace, labels.stack, labels.revision, baseline, labels.slice, evaluator)
        self.eval_pairs.labels(*key).inc()
        # Both created at once: a candidate that only ever loses must read 0 wins, not "no data".
        wins, losses = self.eval_pair_wins.labels(*key), self.eval_pair_losses.labels(*key)
        if outcome > 0:
            wins.inc()
        elif outcome < 0:
            losses.inc()

    def record_retrieval(self, labels: Labels, duration: float, documents: int) -> None:
        self.retrieval_duration.labels(*labels).observe(duration)
        self.retrievals.labels(*labels).inc()
        self.retrieved_documents.labels(*labels).inc(documents)
        empty = self.retrievals_empty.labels(*labels)  # created at 0: an empty rate of 0, not "no data"
        if not documents:
            empty.inc()

    def record_error(self, labels: Labels, kind: str) -> None:
        self.errors.labels(*labels, kind).inc()


class _LoopValue:
    """The value of an answer series' child, without the lock of prometheus_client's ``MutexValue``.

    Taking and releasing that lock is most of an ``inc()`` (0.31 µs of it; 0.15 µs without), and an
    answer updates ~20 values (issue 14). These children are only written from the event loop's thread
    (the handlers and what they call; no router thread touches the answer metrics), where nothing runs
    between the read and the write of ``+=``; a scrape reads one float. Same interface, so the
    metric's own ``inc``/``observe`` (their checks included) and its collection are unchanged.
    """

    __slots__ = ("_exemplar", "_value")

    def __init__(self, value: float, exemplar: Any) -> None:
        self._value = value
        self._exemplar = exemplar

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def set_exemplar(self, exemplar: Any) -> None:
        self._exemplar = exemplar

    def get(self) -> float:
        return self._value

    def get_exemplar(self) -> Any:
        return self._exemplar


def _unlocked(value: Any) -> Any:
    """``value`` as a :class:`_LoopValue`; left as is unless it is a plain ``MutexValue`` (multiprocess mode
    keeps its mmap'd values, and another prometheus_client may keep values otherwise)."""
    if type(value) is not MutexValue:
        return value
    return _LoopValue(value.get(), value.get_exemplar())


def _loop_child(child: Any) -> Any:
    """A counter's or histogram's child whose values are :class:`_LoopValue` (see there)."""
    if hasattr(child, "_value"):
        child._value = _unlocked(child._value)
    if hasattr(child, "_sum"):
        child._sum = _unlocked(child._sum)
    if isinstance(getattr(child, "_buckets", None), list):
        child._buckets = [_unlocked(bucket) for bucket in child._buckets]
    return child


_Inc = Callable[[float], None]


def _inc_of(child: Any) -> _Inc:
    """``child.inc``, or its :class:`_LoopValue`'s ``inc`` when it has one (the same sum, without the checks)."""
    value = getattr(child, "_value", None)
    return value.inc if type(value) is _LoopValue else child.inc


class _Series:
    """One label set's children of the answer metrics. Children that not every answer has
    (time to first token, token counts, a check, an evaluator) are made when first used,
    so the series a scrape shows are exactly those ``labels()`` on each use would make."""

    __slots__ = ("_check_incs", "_children", "_evaluator_incs", "_incs", "_labels", "_metrics", "duration", "quality",
                 "requests", "requests_inc")

    def __init__(self, metrics: RouterMetrics, labels: Labels) -> None:
        self._metrics = metrics
        self._labels = labels
        self.requests = _loop_child(metrics.requests.labels(*labels))
        self.duration = _loop_child(metrics.duration.labels(*labels))
        self.quality = _loop_child(metrics.quality.labels(*labels))
        self._children: dict[str, Any] = {}
        # What an answer adds to, per check and evaluator (check_incs, evaluator_incs): made on first use.
        self._evaluator_incs: dict[str, tuple[_Inc, _Inc, _Inc]] = {}
        self._incs: dict[str, _Inc] = {}
        self._check_incs: dict[str, tuple[_Inc, _Inc]] = {}
        self.requests_inc = _inc_of(self.requests)

    def child(self, name: str) -> Any:
        """``name``'s child (an attribute of :class:`RouterMetrics` labelled like the answers)."""
        child = self._children.get(name)
        if child is None:
            child = self._children[name] = _loop_child(getattr(self._metrics, name).labels(*self._labels))
        return child

    def child_inc(self, name: str) -> _Inc:
        """:func:`_inc_of` :meth:`child`, for amounts known not to be negative."""
        inc = self._incs.get(name)
        if inc is None:
            inc = self._incs[name] = _inc_of(self.child(name))
        return inc

    def check_incs(self, check: str) -> tuple[_Inc, _Inc]:
        """:func:`_inc_of` the (pass, fail) children of :meth:`check`."""
        incs = self._check_incs.get(check)
        if incs is None:
            ok, failed = self.check(check)
            incs = self._check_incs[check] = (_inc_of(ok), _inc_of(failed))
        return incs

    def check(self, check: str) -> tuple[Any, Any]:
        """(pass, fail) children of ``inferstack_router_check_total`` (the metric keeps them: ``labels`` gives the
        same children again, and making one a loop child twice changes nothing)."""
        checks = self._metrics.checks
        return (_loop_child(checks.labels(*self._labels, check, "pass")),
                _loop_child(checks.labels(*self._labels, check, "fail")))

    def evaluator_incs(self, evaluator: str) -> tuple[_Inc, _Inc, _Inc]:
        """The ``inc`` of :meth:`evaluator`'s values, for amounts known not to be negative: a
        :class:`_LoopValue`'s own (the counter's ``inc`` adds only its checks and a call: 0.18 -> 0.08 µs),
        else the child's."""
        incs = self._evaluator_incs.get(evaluator)
        if incs is None:
            count, total, squares = self.evaluator(evaluator)
            incs = self._evaluator_incs[evaluator] = (_inc_of(count), _inc_of(total), _inc_of(squares))
        return incs

    def evaluator(self, evaluator: str) -> tuple[Any, Any, Any]:
        """(samples, sum, sum of squares) children of one evaluator (kept by the metrics, as in :meth:`check`)."""
        m, key = self._metrics, (*self._labels, evaluator)
        return (_loop_child(m.eval_samples.labels(*key)), _loop_child(m.eval_sum.labels(*key)),
                _loop_child(m.eval_squares.labels(*key)))
