"""How a stack looks: its phase, message, conditions and status, decided in one place.

``summarize`` is the one owner of ``status.phase``, ``status.message``,
``status.rollout.step`` and ``status.conditions``. It is a pure function of

* the rollout state (``core/rollout.py`` decides what *happens*; this module
  only how it *looks*),
* whether the first revision is stuck (its pods missed the progress deadline),
* a ``Problem``: the operator cannot use the spec (``InvalidSpec``) or the
  API server refused something it needs (the API server's own reason).

It never reads the previous status, so it cannot undo another writer or be
undone by one: a stuck, failed or degraded stack is summarized the same way
on every pass and, like a healthy one, writes nothing while nothing changes.

Conditions follow kstatus, so ``kubectl wait``, Flux and Argo CD agree:

* ``Ready=True``: the stack serves its desired revision at 100 % and the
  observed generation is current.
* ``Reconciling=True``: work is in progress (first deploy, a rollout). kstatus
  treats it as "InProgress" and GitOps tools wait instead of flapping.
* ``Stalled=True``: the operator cannot make progress without a change
  (a rolled-back candidate, an invalid spec, a refused create).

Conditions that do not hold are written as ``False`` rather than removed, so
``kubectl wait --for=condition=Ready=false`` also works.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from inferstack.api.v1alpha1 import InferenceStackSpec, Phase
from inferstack.core.rollout import COMMAND_ANNOTATION, RolloutState, hold_reason, step_duration, step_label

READY: Final = "Ready"
RECONCILING: Final = "Reconciling"
STALLED: Final = "Stalled"
INVALID_SPEC: Final = "InvalidSpec"
# A message must fit one line of `kubectl get -o wide`; detail goes to Events and logs.
MESSAGE_LIMIT: Final = 240


@dataclass(frozen=True)
class ConditionState:
    status: bool
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Problem:
    """Why the operator cannot do what the spec asks, in one line.

    ``reason`` is ``InvalidSpec`` (only the user can fix it) or the API
    server's reason for refusing a call (``Forbidden`` for a quota,
    ``InternalError`` for a full Service IP range...), which the operator
    retries with backoff.
    """

    reason: str
    message: str


@dataclass(frozen=True)
class Wait:
    """Why the revision waiting for traffic gets none yet, besides its pods.

    Its index version (core/indexcheck.py: ``IndexMissing``...) or the
    embedding model the operator runs for it (core/embedder.py:
    ``EmbedderNotReady``); the message says what to fix or what it waits for.
    """

    reason: str
    message: str


@dataclass(frozen=True)
class Summary:
    phase: Phase
    message: str
    step: str
    conditions: Mapping[str, ConditionState]


_SPACE: Final = re.compile(r"\s+")


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` on one line of at most ``limit`` characters."""
    text = _SPACE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def summarize(
    spec: InferenceStackSpec | None,
    state: RolloutState,
    *,
    revision: str | None,
    now: datetime,
    stuck: bool = False,
    problem: Problem | None = None,
    waiting: Wait | None = None,
) -> Summary:
    """Phase, message, step label and conditions; the only function that decides them.

    ``spec`` and ``revision`` may be None only with a ``problem`` (a spec the
    operator cannot even read). ``stuck``: the revision the spec asks for,
    with no stable revision yet, missed its progress deadline. ``waiting``: what
    the revision waiting for traffic waits for besides its pods.
    """
    step = step_label(spec.rollout.steps, state) if spec is not None else ""
    if problem is not None:
        message = one_line(problem.message)
        return Summary(Phase.FAILED, message, step, _stalled(problem.reason, message))
    assert spec is not None and revision is not None, "a stack without a usable spec needs a problem"
    if state.stable is None and stuck:
        # The first revision's GPU pods never became Ready: only the user can fix that.
        message = f"revision {revision}: pods missed the progress deadline (enough free GPUs? image pullable?)"
        return Summary(Phase.FAILED, message, step, _stalled("ProgressDeadlineExceeded", message))
    phase, message = _rollout_phase(spec, state, revision, now)
    work = phase.value  # what Reconciling says it is doing
    if waiting is not None and state.step_index is None:  # no traffic yet: this is what it waits for
        message = f"waiting for revision {state.candidate or revision}: {waiting.message} ({waiting.reason})"
        work = waiting.reason  # IndexMissing, EmbedderNotReady...: a reason a tool can match on
    message = one_line(message)
    healthy, degraded = phase == Phase.HEALTHY, phase == Phase.DEGRADED
    conditions = {
        READY: ConditionState(healthy, phase.value, message),
        RECONCILING: ConditionState(not healthy and not degraded, work, "" if healthy else message),
        STALLED: ConditionState(degraded, "RolledBack" if degraded else "NotStalled", message if degraded else ""),
    }
    return Summary(phase, message, step, conditions)


def _stalled(reason: str, message: str) -> dict[str, ConditionState]:
    return {
        READY: ConditionState(False, reason, message),
        RECONCILING: ConditionState(False, reason, ""),
        STALLED: ConditionState(True, reason, message),
    }


def _rollout_phase(spec: InferenceStackSpec, s: RolloutState, revision: str, now: datetime) -> tuple[Phase, str]:
    if s.stable is None:
        return Phase.PENDING, f"waiting for revision {revision} to become Ready"
    if s.candidate is None:
        if revision == s.rolled_back:
            return Phase.DEGRADED, (
                f"{s.rollback_reason}; revision {s.stable} serves 100%; "
                f"change the spec or annotate {COMMAND_ANNOTATION}=retry"
            )
        return Phase.HEALTHY, f"revision {s.stable} serves 100%"
    if s.step_index is None:
        waiting = f"waiting for revision {s.candidate}'s pods to become Ready"
        return (Phase.PAUSED if s.paused else Phase.PROGRESSING), waiting
    step = spec.rollout.steps[s.step_index]
    duration = step_duration(step)
    assert s.step_started_at is not None
    if s.paused:
        return Phase.PAUSED, f"paused by command at step {s.step_index + 1}; annotate resume or promote"
    if duration is None:
        return Phase.PAUSED, f"pause step: annotate {COMMAND_ANNOTATION}=promote to continue"
    # An absolute end time, not a countdown: a status that changes every
    # pass would cost a write every pass.
    end = s.step_started_at + duration
    timer = f"step ends {end.strftime('%H:%M:%SZ')}" if end > now else "step time done"
    hold = hold_reason(spec, s)
    return (Phase.PAUSED if step.pause else Phase.PROGRESSING), f"{timer}; {hold or 'gates pass'}"


# ------------------------------------------------------------------ status


def gate_summary(state: RolloutState) -> str:
    """The printer column: ``Pass=3 Inconclusive=1``."""
    counts: dict[str, int] = {}
    for v in state.verdicts:
        counts[v.verdict.value] = counts.get(v.verdict.value, 0) + 1
    return " ".join(f"{k}={n}" for k, n in sorted(counts.items()))


def desired_status(
    current: Mapping[str, Any],
    state: RolloutState,
    summary: Summary,
    *,
    generation: int | None,
    cache_namespace: str | None,
    now: datetime,
) -> dict[str, Any]:
    """The whole status the operator owns, from the state and its summary.

    ``current`` is read only to keep each condition's lastTransitionTime
    (and the conditions others wrote): it never changes what is decided.
    """
    out = state.to_status()
    out["phase"] = summary.phase.value
    out["message"] = summary.message
    out["rollout"]["step"] = summary.step
    out["observedGeneration"] = generation
    out["cacheNamespace"] = cache_namespace
    out["gateSummary"] = gate_summary(state)
    out["conditions"] = merge_conditions(
        current.get("conditions") or [], summary.conditions, generation, now.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    return out


def merge_conditions(
    previous: list[dict[str, Any]],
    wanted: Mapping[str, ConditionState],
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """New conditions list; lastTransitionTime only moves when status flips.

    Keeping it stable is what makes a steady state write nothing.
    """
    by_type = {c.get("type"): c for c in previous}
    out = []
    for ctype, state in wanted.items():
        status = "True" if state.status else "False"
        old = by_type.get(ctype)
        keep = old is not None and old.get("status") == status and old.get("lastTransitionTime")
        out.append(
            {
                "type": ctype,
                "status": status,
                "reason": state.reason,
                "message": state.message,
                "observedGeneration": generation,
                "lastTransitionTime": old["lastTransitionTime"] if keep and old else now,
            }
        )
    # Keep conditions that others (or later versions) wrote, untouched.
    out.extend(c for c in previous if c.get("type") not in wanted)
    return out


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386 patch turning ``old`` into ``new`` for the keys of ``new``; empty when equal.

    Keys dropped from nested maps (a reset failure counter, an expired
    scale-down) become null, which a merge patch needs to delete them.
    """
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = merge_patch(before, value)
            nested.update({k: None for k in before if k not in value})
            if nested:
                patch[key] = nested
        elif before != value:
            patch[key] = value
    return patch
