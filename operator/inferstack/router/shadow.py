"""Shadow traffic: mirror a request to the candidate, measure the answer, discard it.

The client's request never waits for a mirror and never sees its outcome.
Mirrors are bounded by a count of tasks in flight; when full, new mirrors are
dropped and counted rather than queued, because a queue would only grow while
the candidate is slow, which is exactly when it must not cost the stable path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import aiohttp

from inferstack.core.trafficplan import RevisionBundle
from inferstack.router import checks, proxy, tracing
from inferstack.router.errors import UpstreamError, classify
from inferstack.router.evaluators import Evaluators, view_of
from inferstack.router.exchange import rule_evaluations
from inferstack.router.metrics import Labels, RouterMetrics
from inferstack.router.upstream import UpstreamClient

log = logging.getLogger(__name__)


class ShadowMirror:
    def __init__(self, limit: int, metrics: RouterMetrics) -> None:
        self.limit = limit
        self.metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    def submit(self, namespace: str, stack: str, coro: Coroutine[Any, Any, None]) -> bool:
        """Start ``coro`` in the background, or drop it when ``limit`` mirrors are in flight."""
        if len(self._tasks) >= self.limit:
            coro.close()
            self.metrics.shadow_dropped.labels(namespace, stack).inc()
            return False
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        self.metrics.shadow_inflight.set(len(self._tasks))
        task.add_done_callback(self._done)
        return True

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.metrics.shadow_inflight.set(len(self._tasks))
        if not task.cancelled() and task.exception() is not None:
            log.warning("shadow mirror failed: %r", task.exception())

    async def close(self, grace: float = 5.0) -> None:
        """Let mirrors finish for ``grace`` seconds at shutdown, then cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


async def mirror(
    session: UpstreamClient | aiohttp.ClientSession,
    metrics: RouterMetrics,
    labels: Labels,
    bundle: RevisionBundle,
    path: str,
    request_body: dict[str, Any],
    upstream_body: dict[str, Any],
    *,
    request_id: str,
    timeout: aiohttp.ClientTimeout,
    max_response_bytes: int,
    evaluators: Evaluators | None = None,
    on_answer: Callable[[proxy.Answer], None] | None = None,
    tracer: tracing.Tracing | None = None,
    retrieved: Sequence[str] = (),
) -> None:
    """Send one mirrored request and record what came back under role="shadow"; ``on_answer`` sees the answer (judges).

    ``retrieved``: the ids of the documents the candidate's own retrieval put in ``upstream_body``."""
    started = time.perf_counter()
    stream = bool(upstream_body.get("stream"))
    if stream:
        upstream_body, _ = proxy.ask_usage(upstream_body)  # nobody reads a mirror's stream: nothing to strip
    span = tracing.current()  # the shadow copy's span (app.py), if traced
    tracer = tracer or tracing.Tracing.off()
    upstream = tracer.upstream(span, upstream_body, bundle)
    try:
        with tracing.use(upstream):
            response = await proxy.send(session, bundle, path, upstream_body, request_id=request_id + "-shadow", timeout=timeout)
        try:
            if response.status != 200:
                metrics.record_error(labels, f"upstream_{response.status // 100}xx")
                tracing.failed(span, f"upstream_{response.status // 100}xx")
                return
            ttft = None
            if stream:
                observer = proxy.SSEObserver()
                async for chunk in response.content.iter_any():
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    observer.feed(chunk)
                answer = observer.finish()
            else:
                answer = proxy.parse_answer(await proxy.read_bounded(response, max_response_bytes))
        finally:
            response.close()
    except UpstreamError as err:
        metrics.record_error(labels, err.kind)
        tracing.failed(span, err.kind)
        return
    except (aiohttp.ClientError, TimeoutError) as exc:
        metrics.record_error(labels, classify(exc).kind)
        tracing.failed(span, classify(exc).kind)
        return
    finally:
        tracing.end(upstream)
    scores = record_checked_answer(metrics, labels, request_body, answer, started, ttft, evaluators, retrieved)
    if span.is_recording():
        tracing.evaluations_event(span, rule_evaluations(scores), answer.id or None)
        got: dict[str, str | int] = {
            "gen_ai.response.id": answer.id, "gen_ai.response.model": answer.model,
            "gen_ai.usage.input_tokens": answer.prompt_tokens, "gen_ai.usage.output_tokens": answer.completion_tokens,
        }  # fmt: skip
        span.set_attributes({k: v for k, v in got.items() if v})
        if answer.finish_reasons:
            span.set_attribute("gen_ai.response.finish_reasons", answer.finish_reasons)
    if on_answer is not None:
        on_answer(answer)


def record_checked_answer(
    metrics: RouterMetrics,
    labels: Labels,
    request_body: dict[str, Any],
    answer: proxy.Answer,
    started: float,
    ttft: float | None,
    evaluators: Evaluators | None = None,
    retrieved: Sequence[str] = (),
) -> dict[str, float]:
    """Run the online checks and the stack's evaluators on one answer; record everything measured.

    The same for answers returned to clients and for mirrored ones, so a
    shadow step's verdicts are computed exactly like a canary's. ``retrieved``:
    the ids of the documents retrieved for this answer by the revision that
    produced it. Returns the evaluators' scores, which are also the current
    span's evaluation events.
    """
    view = view_of(answer, retrieved)  # one view of the answer for the built-in checks and the evaluators
    results = checks.check(request_body, view)
    metrics.record_answer(
        labels,
        duration=time.perf_counter() - started,
        ttft=ttft,
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
        checks=results,
        score=checks.quality_score(results),
    )
    if evaluators is None:
        return {}
    scores = evaluators.run(request_body, view) if evaluators.scores else {}  # Evaluators.score, on the view built
    metrics.record_samples(labels, scores)
    return scores
