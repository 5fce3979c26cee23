"""Golden-set Jobs at an ``evaluate`` step: create them, read them, delete them (thin I/O).

The decisions are ``core/golden.py``'s; the verdicts go through the normal
analysis path (``Analysis`` -> ``rollout.decide``), so rollback, hold and
advance are the rollout's own logic. Idempotent at every point: the Job's
name is a hash of what it replays, so an operator killed before, during or
after creating it finds the same Job on its next pass and reads its result;
no status field is needed to remember it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from inferstack.api.v1alpha1 import Evaluator, InferenceStackSpec
from inferstack.controller.kube import Kube
from inferstack.core import golden
from inferstack.core.config import OperatorConfig
from inferstack.core.durations import format_duration, parse_duration
from inferstack.core.gates import GateVerdict, Verdict
from inferstack.core.rollout import Analysis, RolloutState
from inferstack.core.trafficplan import revision_bundle

log = logging.getLogger(__name__)

# The Job's own activeDeadlineSeconds ends it at the step's timeout; the
# operator gives it this long to be marked Failed before calling it itself.
DEADLINE_GRACE = timedelta(seconds=30)


@dataclass(frozen=True)
class JobSeen:
    """A golden Job as the watch saw it."""

    name: str
    candidate: str | None  # its candidate revision (label)
    status: dict[str, Any]


async def read_cases(kube: Kube, namespace: str, evaluator: Evaluator) -> list[tuple[str, str]]:
    """The golden set's files as (source, text); a missing ConfigMap or key is a CaseError."""
    assert evaluator.golden_set is not None
    files = []
    for ref in evaluator.golden_set.config_map_refs:
        text = await kube.read_configmap_key(namespace, ref.name, ref.key)
        if text is None:
            raise golden.CaseError(f"ConfigMap {ref.name} has no key {ref.key}")
        files.append((f"{ref.name}/{ref.key}", text))
    return files


async def collect(kube: Kube, namespace: str, jobs: Sequence[JobSeen], candidate: str | None) -> None:
    """Delete golden Jobs whose candidate is no longer rolling out (its verdict is in the status)."""
    for job in jobs:
        if job.candidate != candidate:
            log.info("deleting golden Job %s/%s (its rollout ended)", namespace, job.name)
            await kube.delete_job(namespace, job.name)


async def golden_analysis(
    kube: Kube,
    body: dict[str, Any],
    spec: InferenceStackSpec,
    parts: dict[str, dict],
    jobs: Sequence[JobSeen],
    config: OperatorConfig,
    now: datetime,
) -> Analysis | None:
    """At an evaluate step: the golden sets' verdicts once every Job has finished (or one failed a case).

    None while a Job runs (it is created here when missing), outside evaluate
    steps, and between looks at a held step (one per ``analysisInterval``).
    """
    meta = body["metadata"]
    ns = meta["namespace"]
    state = RolloutState.from_status(body.get("status"))
    await collect(kube, ns, jobs, state.candidate)
    if not state.candidate or not state.stable or state.step_index is None or state.step_started_at is None:
        return None
    step = spec.rollout.steps[min(state.step_index, len(spec.rollout.steps) - 1)]
    sets = golden.step_golden_sets(spec, step)
    if step.evaluate is None or not sets:
        return None
    interval = parse_duration(spec.rollout.analysis_interval)
    if state.last_analysis_at is not None and state.last_analysis_at > state.step_started_at and now - state.last_analysis_at < interval:
        return None  # judged already; a held step is looked at again once per interval
    if state.candidate not in parts or state.stable not in parts:
        return None  # the revisions' parts are not indexed yet
    candidate = revision_bundle(meta, spec, state.candidate, parts[state.candidate], config)
    stable = revision_bundle(meta, spec, state.stable, parts[state.stable], config)
    timeout = parse_duration(step.evaluate.timeout)
    timed_out = now >= state.step_started_at + timeout + DEADLINE_GRACE
    seen = {j.name: j for j in jobs}
    verdicts: list[GateVerdict] = []
    pending = False
    for ev in sets:
        try:
            files = await read_cases(kube, ns, ev)
            golden.parse_cases(files, golden.declared_slices(spec))
        except golden.CaseError as e:
            # Shown and held; looked at again next interval, so fixing the ConfigMap resumes the step.
            verdicts += golden.inconclusive(spec, ev.name, str(e))
            continue
        hash_ = golden.cases_hash(files)
        name = golden.job_name(meta["name"], ev.name, candidate.revision, stable.revision, hash_)
        job = seen.get(name)
        if job is None:
            if timed_out:
                verdicts += golden.inconclusive(spec, ev.name, f"no Job within the step's timeout {format_duration(timeout)}")
                continue
            manifest = golden.build_job(body, spec, ev, candidate, stable, hash_, int(timeout.total_seconds()), config)
            if await kube.create(manifest):
                log.info("created golden Job %s/%s (%s, cases %s)", ns, name, ev.name, hash_)
            pending = True
            continue
        outcome = golden.job_state(job.status)
        if not outcome.finished:
            if timed_out:
                verdicts += golden.inconclusive(spec, ev.name, f"Job {name} did not finish within {format_duration(timeout)}")
            else:
                pending = True
            continue
        messages = await kube.termination_messages(ns, name)
        report: golden.Report | None = None
        problem = ""
        try:
            report = golden.Report.parse(messages[0] if messages else None)
        except golden.ReportError as e:
            problem = str(e)
        if outcome.succeeded and report is not None:
            verdicts += golden.verdicts(spec, ev.name, report, hash_)
        else:
            why = f"Job {name} failed ({outcome.reason})" if not outcome.succeeded else f"Job {name}: {problem}"
            if report is not None and report.error:
                why += f": {report.error}"
            verdicts += golden.inconclusive(spec, ev.name, why)
    if pending and not any(v.verdict == Verdict.FAIL for v in verdicts):
        return None  # a failed critical case decides now; otherwise wait for every Job
    # The data of this analysis is the replay, all of it inside this step.
    return Analysis(state.candidate, now, tuple(verdicts), window_start=state.step_started_at)
