"""LLM judges in the router: sample answers, call the judge off the request path, record samples.

What is asked and how replies are read is :mod:`inferstack.core.judging`
(pure); this module is the I/O around it:

* **Sampling** by request id (``judging.sampled``): every replica judges the
  same requests, and the stable and shadow answers of one request are both
  judged or both not, so a rubric judge compares the two revisions on the
  same requests in a shadow step.
* **Pairs**: for a pairwise judge the stable answer (client-facing) and the
  candidate's shadow answer of one request meet in :class:`Pairs`, a bounded
  table with a time limit; a pair missing its other half (an error, a cache
  hit, a dropped mirror) expires and is counted as ``unpaired``.
* **A bounded queue** with a fixed number of workers: judging never runs on
  the client's request path and never waits in an unbounded backlog. A full
  queue drops the job and counts it.
* **A budget** per stack and evaluator (``maxCallsPerMinute``, a token
  bucket per replica): over it, jobs are dropped and counted. A pairwise job
  costs two calls (both orders).
* **Documents**: an answer of a revision that retrieves is judged with the
  documents that revision retrieved for it (a shadow answer: the
  candidate's), rendered and bounded (``judging.documents_text``, at most
  12,288 characters per answer) when the answer is taken, so the queue and the pairs
  table hold bounded text, never the documents themselves.
* **Errors are errors**: a judge that is down, slow, answers non-200 or
  without a verdict in the required form adds to
  ``inferstack_eval_errors_total`` and gives no sample. A gate then sees no
  new samples and stays Inconclusive (it holds, never promotes) until the
  judge is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

from inferstack.api.v1alpha1 import Evaluator, JudgeMode
from inferstack.core import judging
from inferstack.core.durations import parse_seconds
from inferstack.core.retrieval import Document
from inferstack.core.trafficplan import RevisionBundle, TrafficPlan
from inferstack.router import tracing
from inferstack.router.audit import AuditLog, evaluation_record
from inferstack.router.bundle import apply_bundle
from inferstack.router.metrics import Labels, RouterMetrics

log = logging.getLogger(__name__)

JUDGE_TENANT: Final = "inferstack-judge"  # the cache salt of judge calls made through a judge stack
MAX_REPLY_BYTES: Final = 256 * 1024


@dataclass(frozen=True)
class Judge:
    """One judge evaluator of a plan, ready to call."""

    name: str
    mode: JudgeMode
    criteria: str
    rate: float
    per_minute: int
    timeout: float
    url: str | None  # hosted endpoint (base URL without /v1)
    model: str | None
    stack: str | None  # or another stack served by this router, by name in the same namespace
    api_key: str | None = None

    @classmethod
    def of(cls, evaluator: Evaluator, api_key: str | None) -> Judge:
        j = evaluator.judge
        assert j is not None
        t = judging.target(j)
        return cls(
            evaluator.name, j.mode, j.criteria, j.sample_rate, j.max_calls_per_minute, parse_seconds(j.timeout),
            t.url, t.model, t.stack, api_key,
        )  # fmt: skip

    @property
    def pairwise(self) -> bool:
        return self.mode == JudgeMode.PAIRWISE


def plan_judges(plan: TrafficPlan) -> list[Judge]:
    keys = plan.evaluation.judge_api_keys
    return [Judge.of(e, keys.get(e.name)) for e in plan.evaluation.evaluators if e.judge is not None]


class JudgeError(Exception):
    """A judge call that gave no verdict; ``kind`` is the bounded label value."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ------------------------------------------------------------------ budget


class Budget:
    """Token buckets per (stack, evaluator): ``per_minute`` calls, refilled continuously."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 4096) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    def take(self, key: tuple[str, str], per_minute: int, cost: int = 1) -> bool:
        now = self.clock()
        tokens, at = self._buckets.pop(key, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - at) * per_minute / 60.0)
        ok = tokens >= cost
        self._buckets[key] = (tokens - cost if ok else tokens, now)
        while len(self._buckets) > self.max_keys:  # stacks come and go; never grow without bound
            self._buckets.popitem(last=False)
        return ok


# ------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class Judged:
    """One answer as a judge sees it: its text and the documents it was given (``judging.documents_text``; "": none)."""

    text: str
    documents: str = ""


@dataclass
class _Pair:
    expires: float
    stable: Judged | None = None
    candidate: Judged | None = None


class Pairs:
    """Stable and shadow answers of the same request, until both are here or the pair expires."""

    def __init__(
        self, limit: int = 1024, ttl: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.ttl = ttl
        self.clock = clock
        self._pairs: OrderedDict[tuple[str, str, str], _Pair] = OrderedDict()
        self._expired: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self._pairs)

    def expect(self, key: tuple[str, str, str]) -> bool:
        """Open a pair; False (and nothing kept) when the table is full of live pairs."""
        self._expire()
        if len(self._pairs) >= self.limit:
            return False
        self._pairs[key] = _Pair(self.clock() + self.ttl)
        return True

    def take_expired(self) -> list[tuple[str, str]]:
        """(stack key, evaluator) of each pair that expired unpaired since the last call."""
        out, self._expired = self._expired, []
        return out

    def add(self, key: tuple[str, str, str], role: str, text: str, documents: str = "") -> tuple[Judged, Judged] | None:
        """Add one half (its text and rendered documents); the (stable, candidate) answers once both are here, else None."""
        pair = self._pairs.get(key)
        if pair is None:
            return None
        if role == "shadow":
            pair.candidate = Judged(text, documents)
        else:
            pair.stable = Judged(text, documents)
        if pair.stable is None or pair.candidate is None:
            return None
        del self._pairs[key]
        return pair.stable, pair.candidate

    def _expire(self) -> None:
        # Insertion order is expiry order (one ttl for all), so the oldest are first.
        now = self.clock()
        while self._pairs:
            key, pair = next(iter(self._pairs.items()))
            if pair.expires > now:
                break
            del self._pairs[key]
            if len(self._expired) < self.limit:
                self._expired.append(key[:2])


# ------------------------------------------------------------------- runner


@dataclass(frozen=True)
class _Job:
    judge: Judge
    plan: TrafficPlan
    labels: Labels  # for a pair: the candidate's labels; ``baseline`` is the stable revision
    body: Mapping[str, Any]
    answers: tuple[Judged, ...]  # a pair: (stable, candidate)
    baseline: str = ""
    request_id: str = ""
    trace: tracing.SpanContext | None = None  # the scored answer's span: the verdict is recorded in its trace


@dataclass
class JudgeRunner:
    """The router's judges: sampling, pairing, queue, budget, workers, metrics."""

    metrics: RouterMetrics
    resolve: Callable[[str], TrafficPlan | None]  # "namespace/stack" -> plan in force (judge stacks)
    queue_limit: int = 256
    workers: int = 8
    budget: Budget = field(default_factory=Budget)
    pairs: Pairs = field(default_factory=Pairs)
    session: aiohttp.ClientSession | None = None
    _queue: asyncio.Queue[_Job] | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _judges: dict[str, list[Judge]] = field(default_factory=dict)
    tracer: tracing.Tracing = field(default_factory=tracing.Tracing.off)
    audit: AuditLog | None = None

    # ----------------------------------------------------------- lifecycle

    def start(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self._queue = asyncio.Queue(self.queue_limit)
        self._tasks = [asyncio.get_running_loop().create_task(self._work()) for _ in range(self.workers)]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def plan_changed(self, key: str, plan: TrafficPlan | None) -> None:
        if plan is None:
            self._judges.pop(key, None)
        else:
            self._judges[key] = plan_judges(plan)

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    # -------------------------------------------------------------- intake

    def expect_pair(self, plan: TrafficPlan, request_id: str) -> None:
        """Before a request with a shadow copy is served: open a pair for each pairwise judge that samples it."""
        for judge in self._judges.get(plan.key, ()):
            sampled = judge.pairwise and judging.sampled(request_id, judge.name, judge.rate)
            if sampled and not self.pairs.expect((plan.key, judge.name, request_id)):
                self._drop(plan, judge, "pairs_full")
        for stack_key, name in self.pairs.take_expired():
            namespace, _, stack = stack_key.partition("/")
            self.metrics.eval_dropped.labels(namespace, stack, name, "unpaired").inc()

    def answered(
        self, plan: TrafficPlan, labels: Labels, body: Mapping[str, Any], text: str, request_id: str,
        documents: Sequence[Document] = (),
    ) -> None:
        """An answer the router saw (client-facing or shadow): judge it if sampled, or complete a pair.

        ``documents``: what the answer's revision retrieved for it; the judge sees them with the answer.
        """
        rendered: str | None = None  # rendered once, and only for a request some judge samples
        for judge in self._judges.get(plan.key, ()):
            if not judging.sampled(request_id, judge.name, judge.rate):
                continue
            if rendered is None:
                rendered = judging.documents_text(documents)
            if judge.pairwise:
                if labels.role not in ("stable", "shadow"):
                    continue  # pairs are a stable answer and the candidate's shadow answer of one request
                both = self.pairs.add((plan.key, judge.name, request_id), labels.role, text, rendered)
                if both is not None and plan.candidate is not None:
                    cand = Labels(
                        labels.namespace, labels.stack, plan.candidate.revision, "shadow", labels.slice
                    )
                    self._submit(_Job(judge, plan, cand, body, both, baseline=plan.stable.revision, request_id=request_id,
                                      trace=tracing.current_context()), cost=2)
            else:
                self._submit(_Job(judge, plan, labels, body, (Judged(text, rendered),), request_id=request_id,
                                  trace=tracing.current_context()), cost=1)

    def _submit(self, job: _Job, cost: int) -> None:
        assert self._queue is not None
        if not self.budget.take((job.plan.key, job.judge.name), job.judge.per_minute, cost):
            self._drop(job.plan, job.judge, "budget")
            return
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self._drop(job.plan, job.judge, "queue_full")

    def _drop(self, plan: TrafficPlan, judge: Judge, reason: str) -> None:
        self.metrics.eval_dropped.labels(plan.namespace, plan.stack, judge.name, reason).inc()

    # ------------------------------------------------------------- workers

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            job = await self._queue.get()
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not kill the worker
                log.exception("judge %s of %s failed unexpectedly", job.judge.name, job.plan.key)
            finally:
                self._queue.task_done()

    async def _run(self, job: _Job) -> None:
        judge, labels = job.judge, job.labels
        try:
            if judge.pairwise:
                stable, candidate = job.answers
                first = judging.parse_choice(
                    await self._ask(
                        job, judging.pairwise_messages(judge.criteria, job.body, stable.text, candidate.text,
                                                       stable.documents, candidate.documents)
                    )
                )
                second = judging.parse_choice(
                    await self._ask(
                        job, judging.pairwise_messages(judge.criteria, job.body, candidate.text, stable.text,
                                                       candidate.documents, stable.documents)
                    )
                )
                outcome = judging.pair_outcome(first, second)
                self.metrics.record_pair(labels, job.baseline, judge.name, outcome)
                label = "win" if outcome > 0 else "loss" if outcome < 0 else "tie"
                self._recorded(job, tracing.Evaluation(judge.name, outcome, label, f"candidate vs stable {job.baseline}"))
            else:
                answer = job.answers[0]
                reply = await self._ask(
                    job, judging.rubric_messages(judge.criteria, job.body, answer.text, answer.documents)
                )
                rating = judging.parse_rating(reply)
                self.metrics.record_samples(labels, {judge.name: rating})
                self._recorded(job, tracing.Evaluation(judge.name, rating))
        except judging.JudgeReplyError as exc:
            self._error(labels, judge, "reply", str(exc))
        except JudgeError as exc:
            self._error(labels, judge, exc.kind, str(exc))

    def _recorded(self, job: _Job, result: tracing.Evaluation) -> None:
        """A verdict in the scored request's trace and in the audit log (metrics are recorded by the caller)."""
        labels = job.labels
        self.tracer.later(job.trace, f"evaluate {job.judge.name}", [result], {
            "inferstack.stack": labels.stack, "inferstack.namespace": labels.namespace, "inferstack.revision": labels.revision,
            "inferstack.role": labels.role, "inferstack.slice": labels.slice, "inferstack.request_id": job.request_id,
            "inferstack.evaluator.kind": f"judge/{job.judge.mode}",
        })  # fmt: skip
        if self.audit is not None:
            self.audit.write(evaluation_record(
                namespace=labels.namespace, stack=labels.stack, revision=labels.revision, role=labels.role, slice_=labels.slice,
                evaluator=job.judge.name, score=result.score, label=result.label, request_id=job.request_id,
                trace_id=format(job.trace.trace_id, "032x") if job.trace is not None else None,
            ))  # fmt: skip

    def _error(self, labels: Labels, judge: Judge, kind: str, message: str) -> None:
        self.metrics.eval_errors.labels(
            labels.namespace, labels.stack, labels.revision, judge.name, kind
        ).inc()
        log.debug("judge %s of %s/%s: %s", judge.name, labels.namespace, labels.stack, message)

    async def _ask(self, job: _Job, messages: list[dict[str, str]]) -> str:
        """One judge call; its reply text, or JudgeError."""
        assert self.session is not None
        judge = job.judge
        url, model, key, body_extra = judge.url, judge.model, judge.api_key, None
        if judge.stack is not None:
            # Another stack of this namespace: its stable revision, with its own bundle applied.
            target = self.resolve(f"{job.plan.namespace}/{judge.stack}")
            if target is None:
                raise JudgeError("no_judge_stack", f"judge stack {judge.stack} has no traffic plan here")
            bundle: RevisionBundle = target.stable
            url, model, key = bundle.url, bundle.served_model, bundle.api_key
            body_extra = bundle
        assert url is not None and model is not None
        body: dict[str, Any] = judging.request_body(model, messages)
        if body_extra is not None:
            # The judge stack's model and cache salt. Not chat=True: its system prompt would replace the
            # judge's instructions (the verdict's [[...]] form) and its tools invite a tool call, not a verdict.
            body = apply_bundle(body, body_extra, JUDGE_TENANT, chat=False)
            if body_extra.system_prompt:
                system = f"{body_extra.system_prompt}\n\n{messages[0]['content']}"
                body["messages"] = [{"role": "system", "content": system}, *messages[1:]]
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        timeout = aiohttp.ClientTimeout(total=judge.timeout)
        try:
            async with self.session.post(
                url.rstrip("/") + "/v1/chat/completions",
                data=json.dumps(body),
                headers=headers,
                timeout=timeout,
            ) as r:
                data = await r.content.read(MAX_REPLY_BYTES + 1)
                if r.status != 200:
                    raise JudgeError(f"http_{r.status // 100}xx", f"judge answered HTTP {r.status}")
        except TimeoutError as exc:
            raise JudgeError("timeout", f"judge took longer than {judge.timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise JudgeError("connect", f"judge unreachable: {type(exc).__name__}") from exc
        if len(data) > MAX_REPLY_BYTES:
            raise JudgeError("reply", "judge reply too large")
        try:
            return judging.reply_text(json.loads(data))
        except ValueError as exc:  # JSONDecodeError and JudgeReplyError
            raise JudgeError("reply", str(exc)) from exc
