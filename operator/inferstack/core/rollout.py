"""The rollout state machine: from what the cluster holds and sees to the next step.

``decide(spec, state, obs, now)`` is a pure function. The handler reads the
stack's status into a ``RolloutState``, gathers ``Observations`` (the revision
the spec hashes to, which revisions are Ready, the latest gate analysis, a
manual command), calls ``decide`` and applies the ``Decision``: write the
traffic plan if ``rewrite_traffic``, emit ``events``, and write the state to
the status (``core/status.py`` derives phase, message and conditions from it:
this module decides what happens, that one alone how it looks). Everything ``decide`` needs to continue is in the status,
so an operator killed at any instant resumes the same step with the same
timers, and calling ``decide`` twice with the same inputs decides the same.

Life of a candidate (docs/rollout.md draws it)::

    spec hashes to a new revision
      -> waiting: candidate pods not Ready; no traffic; progressDeadline runs
      -> step 0 .. n (shadow / canary / pause / ramp); each step starts when
         the previous one ends and ends when its duration has passed AND an
         analysis whose whole data window lies inside the step passed every gate
      -> promotion when the weight reaches 100 or the steps run out:
         the candidate becomes stable, the old stable stays warm scaleDownDelay
    any step -> rollback: a gate failed failureLimit consecutive analyses,
         the pods missed progressDeadline, or a manual abort

Rules that keep this honest:

* Inconclusive verdicts hold the step: they never promote and never count
  as failures (gates.py turns them into Fail for ``onInconclusive: Fail``).
* Gates are required only while the candidate receives traffic (shadow or
  weight): with no traffic there is nothing to measure.
* A weight of 100 is a promotion: at 100 % the stable revision serves no one,
  so comparing with it would stay inconclusive forever.
* A rolled-back revision is not retried by itself: while the spec hashes to
  it, the stack stays Degraded until the spec changes or ``retry``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from inferstack.api.v1alpha1 import InferenceStackSpec, RolloutStep
from inferstack.core.durations import format_duration, parse_duration
from inferstack.core.evaluation import judged_in
from inferstack.core.gates import GateVerdict, Verdict
from inferstack.core.golden import step_golden_sets
from inferstack.core.promql import MIN_WINDOW
from inferstack.core.revision import digest
from inferstack.core.sequential import Direction

COMMAND_ANNOTATION: Final = "inferstack.dev/command"
COMMAND_ID_ANNOTATION: Final = "inferstack.dev/command-id"
NORMAL: Final = "Normal"
WARNING: Final = "Warning"
FULL: Final = 100


# ------------------------------------------------------------------ commands


class Verb(StrEnum):
    PROMOTE = "promote"  # end the current step now (one ramp increment for a ramp)
    PROMOTE_FULL = "promote-full"  # make the candidate stable now
    ABORT = "abort"  # roll the candidate back
    RETRY = "retry"  # roll out the rolled-back revision again
    PAUSE = "pause"  # hold the rollout where it is (gates still roll back)
    RESUME = "resume"
    UNDO = "undo"  # undo:<revision> makes an earlier revision the candidate


@dataclass(frozen=True)
class Command:
    """A manual command from annotations; ``key`` is what makes it run once."""

    verb: Verb | None  # None when the annotation is not a command we know
    argument: str = ""
    key: str = ""
    error: str = ""


def parse_command(annotations: Mapping[str, str] | None) -> Command | None:
    """The command in ``inferstack.dev/command`` (+ ``inferstack.dev/command-id``), if any.

    A command runs once per distinct (command, command-id) pair: the operator
    records the pair in ``status.rollout.lastCommand``. To repeat the same
    command, change the id (``kubectl istack`` uses a timestamp).
    """
    raw = (annotations or {}).get(COMMAND_ANNOTATION, "").strip()
    if not raw:
        return None
    key = f"{raw}#{(annotations or {}).get(COMMAND_ID_ANNOTATION, '').strip()}"
    name, _, argument = raw.partition(":")
    try:
        verb = Verb(name.strip())
    except ValueError:
        known = ", ".join(v.value for v in Verb)
        return Command(None, key=key, error=f"unknown command {raw!r}; known: {known} (undo:<revision>)")
    argument = argument.strip()
    if (verb == Verb.UNDO) != bool(argument):
        return Command(
            None, key=key, error=f"{raw!r}: undo takes a revision (undo:<revision>), other commands none"
        )
    return Command(verb, argument, key)


# --------------------------------------------------------------------- state


def _iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    # Microseconds are kept so a serialized state resumes with exactly the same timers.
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if t.microsecond else "%Y-%m-%dT%H:%M:%SZ")


def _time(s: str | None) -> datetime | None:
    return datetime.fromisoformat(s) if s else None


@dataclass(frozen=True)
class RolloutState:
    """The rollout's memory, read from and written to ``.status``."""

    stable: str | None = None
    candidate: str | None = None
    candidate_since: datetime | None = (
        None  # when the candidate was chosen: progressDeadline counts from here
    )
    step_index: int | None = None  # None while the candidate's pods are not Ready yet
    step_started_at: datetime | None = None  # also restarts at every ramp increment
    ramp_weight: int | None = None
    candidate_weight: int = 0  # the traffic last decided, to rewrite the plan only on change
    shadow_percent: int = 0
    failures: Mapping[str, int] = field(default_factory=dict)  # consecutive failing analyses per gate/slice
    last_analysis_at: datetime | None = None  # end of the last counted analysis' data window
    last_analysis_from: datetime | None = None  # its start: never before the step's start
    verdicts: tuple[GateVerdict, ...] = ()  # of the last analysis
    paused: bool = False
    rolled_back: str | None = None
    rollback_reason: str = ""
    scale_down_at: Mapping[str, datetime] = field(default_factory=dict)  # warm old revisions
    last_command: str | None = None
    judged_by: str = ""  # hash of the gates and evaluation the current step is judged by

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> RolloutState:
        status = status or {}
        r = status.get("rollout") or {}
        t = status.get("traffic") or {}
        return cls(
            stable=status.get("stableRevision"),
            candidate=status.get("candidateRevision"),
            candidate_since=_time(r.get("candidateSince")),
            step_index=r.get("stepIndex"),
            step_started_at=_time(r.get("stepStartedAt")),
            ramp_weight=r.get("rampWeight"),
            candidate_weight=t.get("candidateWeight", 0),
            shadow_percent=t.get("shadowPercent", 0),
            failures=dict(r.get("failures") or {}),
            last_analysis_at=_time(r.get("lastAnalysisAt")),
            last_analysis_from=_time(r.get("lastAnalysisFrom")),
            verdicts=tuple(GateVerdict.from_status(g) for g in status.get("gates") or []),
            paused=bool(r.get("paused", False)),
            rolled_back=status.get("rolledBackRevision"),
            rollback_reason=r.get("rollbackReason", ""),
            scale_down_at={k: t for k, v in (r.get("scaleDownAt") or {}).items() if (t := _time(v))},
            last_command=r.get("lastCommand"),
            judged_by=r.get("judgedBy", ""),
        )

    def to_status(self) -> dict[str, Any]:
        """The status fields this state owns (camelCase, as in the CRD)."""
        return {
            "stableRevision": self.stable,
            "candidateRevision": self.candidate,
            "rolledBackRevision": self.rolled_back,
            "traffic": {
                "stableWeight": FULL - self.candidate_weight,
                "candidateWeight": self.candidate_weight,
                "shadowPercent": self.shadow_percent,
            },
            "gates": [v.to_status() for v in self.verdicts],
            "rollout": {
                "stepIndex": self.step_index,
                "stepStartedAt": _iso(self.step_started_at),
                "rampWeight": self.ramp_weight,
                "failures": dict(self.failures),
                "candidateSince": _iso(self.candidate_since),
                "lastAnalysisAt": _iso(self.last_analysis_at),
                "lastAnalysisFrom": _iso(self.last_analysis_from),
                "paused": self.paused,
                "rollbackReason": self.rollback_reason,
                "scaleDownAt": {k: _iso(v) for k, v in sorted(self.scale_down_at.items())},
                "lastCommand": self.last_command,
                "judgedBy": self.judged_by,
            },
        }


# -------------------------------------------------------------- observations


@dataclass(frozen=True)
class Analysis:
    """Gate verdicts for ``candidate`` from the data in ``[window_start, taken_at]``.

    ``taken_at`` is the end of the data window (the evaluation time of the
    queries), not the moment the answers came back: a step ended in the same
    pass must not be credited with evidence from before it began.
    """

    candidate: str
    taken_at: datetime
    verdicts: tuple[GateVerdict, ...]
    window_start: datetime | None = None  # None: as old as taken_at - the window (treated as unknown)


@dataclass(frozen=True)
class Observations:
    revision: str  # what the spec hashes to now
    ready: frozenset[str] = frozenset()  # revisions whose pods are all Ready (a hosted model always is)
    known: frozenset[str] = frozenset()  # revisions whose objects still exist: possible undo targets
    analysis: Analysis | None = None
    command: Command | None = None
    not_ready: dict[str, str] = field(default_factory=dict)  # why a revision is not ready besides its pods (its index)


# ------------------------------------------------------------------ decision


@dataclass(frozen=True)
class Traffic:
    """Where requests go; ``candidate`` is None unless it gets some of them."""

    stable: str | None
    candidate: str | None = None
    candidate_weight: int = 0
    shadow_percent: int = 0

    @property
    def stable_weight(self) -> int:
        return FULL - self.candidate_weight


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Rollback:
    """Why a candidate was rolled back; gate fields are set for a gate failure."""

    revision: str
    cause: str  # GateFailed | ProgressDeadlineExceeded | Aborted
    message: str
    gate: str | None = None
    slice: str | None = None
    value: float | None = None
    baseline: float | None = None
    threshold: str | None = None


@dataclass(frozen=True)
class Decision:
    """What the rollout does next. How the stack *looks* (phase, message,
    conditions) is decided from ``state`` by ``core/status.py`` alone."""

    state: RolloutState
    traffic: Traffic
    events: tuple[Event, ...] = ()
    rewrite_traffic: bool = False  # write the traffic plan: only when ``traffic`` changed
    rollback: Rollback | None = None
    skipped_steps: bool = False  # an undo to a warm revision switched at once
    requeue_after: timedelta | None = None  # when to call decide again if nothing else happens
    promoted: str | None = None  # the revision this decision made stable (after a rollout)

    @property
    def scale_down_at(self) -> Mapping[str, datetime]:
        """Revisions that are neither stable nor candidate but stay scaled up until then."""
        return self.state.scale_down_at


def judging_hash(spec: InferenceStackSpec) -> str:
    """A short hash of what judges a step: the gates and the evaluation (not part of the revision).

    A gate's ``direction`` counts only when it is LowerIsBetter: unset and
    HigherIsBetter judge alike, and leaving it out keeps the hash every stack
    had before the field existed, so an operator upgrade restarts no step's
    analysis (nor does writing the default out). Flipping it restarts it.
    """
    judging = spec.model_dump(mode="json", by_alias=True, include={"gates", "evaluation"})
    for gate in judging.get("gates", []):
        if gate.get("direction") != Direction.LOWER:
            gate.pop("direction", None)
    return digest(judging)[:12]


# -------------------------------------------------------------- step helpers


def step_duration(step: RolloutStep) -> timedelta | None:
    """How long a step (or one ramp increment) lasts; None = until promoted."""
    if step.shadow:
        return parse_duration(step.shadow.duration)
    if step.canary:
        return parse_duration(step.canary.duration)
    if step.ramp:
        return parse_duration(step.ramp.duration)
    if step.evaluate:
        return timedelta(0)  # ends as soon as its golden sets' verdicts pass
    assert step.pause is not None
    return parse_duration(step.pause.duration) if step.pause.duration else None


def _weights(steps: list[RolloutStep], index: int, ramp_weight: int | None) -> tuple[int, int]:
    """(candidate weight, shadow percent) while step ``index`` runs.

    The weight never decreases along the steps: canary users stay canary
    users as the rollout proceeds. A pause keeps the previous step's traffic.
    """
    weight, shadow = 0, 0
    if steps[index].evaluate:
        return 0, 0  # golden sets are replayed before the candidate gets any traffic
    for step in steps[: index + 1]:
        if step.shadow:
            shadow = step.shadow.percent
        elif step.canary:
            weight, shadow = max(weight, step.canary.weight), 0
        elif step.ramp:
            weight, shadow = max(weight, ramp_weight or 0), 0
    return weight, shadow


def _describe(step: RolloutStep, weight: int) -> str:
    if step.shadow:
        return f"shadow {step.shadow.percent}%"
    if step.canary:
        return f"canary {weight}%"
    if step.ramp:
        return f"ramp {weight}%"
    if step.evaluate:
        return "evaluate"
    return "paused"


def step_label(steps: list[RolloutStep], state: RolloutState) -> str:
    """The printer-column label: "shadow 10%", "canary 5%", "ramp 50%", "paused"."""
    if state.candidate is None:
        return ""
    if state.step_index is None:
        label = "waiting for pods"
    else:
        label = _describe(steps[state.step_index], state.candidate_weight)
    return f"{label} (paused)" if state.paused and label != "paused" else label


def analysis_window(
    spec: InferenceStackSpec, state: RolloutState, now: datetime, min_window: timedelta = MIN_WINDOW
) -> timedelta | None:
    """The data window of the analysis to take now, or None when none is due.

    An analysis is due only while the candidate receives traffic (with none
    there is nothing to measure), once per ``analysisInterval``. Its window
    is the whole step so far, from the step's start to ``now``: never data
    from the step before (a candidate at 25 % judged partly on its 5 %
    traffic), and every sample of this step, so a low-weight canary gathers
    evidence for as long as it runs instead of over a sliding few seconds.
    A step younger than ``min_window`` (a few scrape intervals, the
    operator's ``minAnalysisWindowSeconds``) waits, because ``rate()`` over
    fewer scrapes returns nothing useful.
    """
    if not spec.gates or state.candidate is None or state.step_started_at is None:
        return None
    if state.candidate_weight == 0 and state.shadow_percent == 0:
        return None
    interval = parse_duration(spec.rollout.analysis_interval)
    if state.last_analysis_at is not None and now - state.last_analysis_at < interval:
        return None
    age = now - state.step_started_at
    return age if age >= min_window else None


def hold_reason(spec: InferenceStackSpec, state: RolloutState) -> str:
    """Why the gates keep the current step, or "" when they let it end."""
    step = spec.rollout.steps[state.step_index or 0]
    if step.evaluate:
        # Judged by its golden-set Jobs (even with no gate: critical cases), without traffic.
        if not step_golden_sets(spec, step):
            return ""
    elif not spec.gates or (state.candidate_weight == 0 and state.shadow_percent == 0):
        return ""
    elif not any(judged_in(spec, g, step.kind) for g in spec.gates):
        return ""  # e.g. a pause whose only gate is a pairwise judge: nothing here can hold it
    assert state.step_started_at is not None
    if (
        state.last_analysis_at is None
        or state.last_analysis_at <= state.step_started_at
        or (state.last_analysis_from is not None and state.last_analysis_from < state.step_started_at)
        or not state.verdicts
    ):
        return "waiting for the golden set Jobs" if step.evaluate else "waiting for an analysis of this step"
    pending = [v for v in state.verdicts if v.verdict != Verdict.PASS]
    if pending:
        v = pending[0]
        return f"{v.where} {v.verdict.value.lower()}: {v.message}" + (
            f" (+{len(pending) - 1} more)" * (len(pending) > 1)
        )
    if step.shadow and step.shadow.min_samples:
        few = [v for v in state.verdicts if v.samples is not None and v.samples < step.shadow.min_samples]
        if few:
            return f"shadow: {few[0].where} has {few[0].samples:.0f} of {step.shadow.min_samples} samples"
    return ""


# -------------------------------------------------------------------- decide


class _Run:
    """One decision in the making: the state as it evolves, plus what to tell the world."""

    def __init__(
        self, spec: InferenceStackSpec, state: RolloutState, obs: Observations, now: datetime, min_window: timedelta
    ) -> None:
        self.spec, self.obs, self.now, self.min_window = spec, obs, now, min_window
        self.steps = spec.rollout.steps
        self.s = state
        self.events: list[Event] = []
        self.rollback: Rollback | None = None
        self.skipped = False
        self.manual: Verb | None = None  # promote / promote-full, applied once the gates are read
        self.promoted: str | None = None

    def event(self, reason: str, message: str, type_: str = NORMAL) -> None:
        self.events.append(Event(type_, reason, message))

    def keep_warm(self, revision: str | None) -> None:
        if revision:
            delay = parse_duration(self.spec.rollout.scale_down_delay)
            self.s = replace(self.s, scale_down_at={**self.s.scale_down_at, revision: self.now + delay})

    # ----------------------------------------------------------- transitions

    def start(self, revision: str) -> None:
        """A fresh rollout of ``revision``: every per-rollout field resets."""
        warm = {k: v for k, v in self.s.scale_down_at.items() if k != revision}
        self.s = replace(
            self.s,
            candidate=revision,
            candidate_since=self.now,
            step_index=None,
            step_started_at=None,
            ramp_weight=None,
            failures={},
            last_analysis_at=None,
            last_analysis_from=None,
            verdicts=(),
            scale_down_at=warm,
        )
        self.event("RolloutStarted", f"rolling out revision {revision} (stable {self.s.stable})")

    def drop_candidate(self) -> None:
        """Candidate out of traffic, kept warm for scaleDownDelay; nothing recorded as rolled back."""
        self.keep_warm(self.s.candidate)
        self.s = replace(
            self.s,
            candidate=None,
            candidate_since=None,
            step_index=None,
            step_started_at=None,
            ramp_weight=None,
        )

    def roll_back(self, cause: str, message: str, verdict: GateVerdict | None = None) -> None:
        revision = self.s.candidate
        assert revision is not None
        # An undo candidate is not what the spec asks for: the revision the undo
        # replaced stays the one marked rolled back, so it does not restart.
        marked = revision if revision == self.obs.revision else self.s.rolled_back
        text = f"rolled back revision {revision} to {self.s.stable}: {message}"
        self.drop_candidate()
        self.s = replace(self.s, failures={}, rolled_back=marked, rollback_reason=text)
        self.rollback = Rollback(
            revision,
            cause,
            text,
            *(
                (verdict.gate, verdict.slice, verdict.value, verdict.baseline, verdict.threshold)
                if verdict
                else ()
            ),
        )
        self.event(cause, text, WARNING)

    def promote(self, why: str) -> None:
        old, new = self.s.stable, self.s.candidate
        assert new is not None
        self.keep_warm(old)
        self.s = replace(
            self.s,
            stable=new,
            candidate=None,
            candidate_since=None,
            step_index=None,
            step_started_at=None,
            ramp_weight=None,
            failures={},
            scale_down_at={k: v for k, v in self.s.scale_down_at.items() if k != new},
            rolled_back=None if self.s.rolled_back == new else self.s.rolled_back,
            rollback_reason="" if self.s.rolled_back == new else self.s.rollback_reason,
        )
        self.promoted = new
        self.event("Promoted", f"revision {new} is stable and serves 100% ({why}); {old} stays warm")

    def enter(self, index: int) -> None:
        """Start step ``index``; past the last step, or at weight 100, promote."""
        if index >= len(self.steps):
            self.promote("all steps passed")
            return
        step = self.steps[index]
        ramp = self.s.ramp_weight
        if step.ramp:
            before, _ = _weights(self.steps, index - 1, ramp)
            ramp = min(FULL, before + step.ramp.increment)
        weight, _ = _weights(self.steps, index, ramp)
        if weight >= FULL:
            self.promote("weight reached 100%")
            return
        self.s = replace(self.s, step_index=index, step_started_at=self.now, ramp_weight=ramp)
        label = _describe(step, weight)
        self.event("StepStarted", f"revision {self.s.candidate}: step {index + 1}/{len(self.steps)}, {label}")

    def advance(self) -> None:
        """End the current step (or ramp increment)."""
        index = self.s.step_index
        assert index is not None
        step = self.steps[index]
        if step.ramp and (self.s.ramp_weight or 0) + step.ramp.increment < FULL:
            self.s = replace(
                self.s, ramp_weight=(self.s.ramp_weight or 0) + step.ramp.increment, step_started_at=self.now
            )
            self.event("StepStarted", f"revision {self.s.candidate}: ramp to {self.s.ramp_weight}%")
        elif step.ramp:
            self.promote("ramp reached 100%")
        else:
            self.enter(index + 1)

    # ---------------------------------------------------------------- phases

    def command(self) -> None:
        cmd = self.obs.command
        if cmd is None or cmd.key == self.s.last_command:
            return
        self.s = replace(self.s, last_command=cmd.key)
        if cmd.verb is None:
            self.event("CommandInvalid", cmd.error, WARNING)
        elif cmd.verb == Verb.PAUSE:
            self.s = replace(self.s, paused=True)
            self.event("Paused", "rollouts paused by command; gates still roll back")
        elif cmd.verb == Verb.RESUME:
            self.s = replace(self.s, paused=False)
            self.event("Resumed", "rollouts resumed by command")
        elif cmd.verb == Verb.ABORT:
            if self.s.candidate is None:
                self.event("CommandIgnored", "abort: no rollout in progress", WARNING)
            else:
                self.roll_back("Aborted", "aborted by command")
        elif cmd.verb == Verb.RETRY:
            if self.s.rolled_back is not None and self.s.rolled_back == self.obs.revision:
                self.s = replace(self.s, rolled_back=None, rollback_reason="")
                self.event("RetryRequested", f"retrying revision {self.obs.revision}")
            else:
                self.event("CommandIgnored", "retry: the spec's revision was not rolled back", WARNING)
        elif cmd.verb == Verb.UNDO:
            self.undo(cmd.argument)
        else:  # promote, promote-full: need the gates read first
            self.manual = cmd.verb

    def undo(self, target: str) -> None:
        if target not in self.obs.known:
            self.event("CommandIgnored", f"undo: revision {target} no longer exists", WARNING)
            return
        if target == self.s.stable:
            self.event("CommandIgnored", f"undo: revision {target} is already stable; use abort", WARNING)
            return
        if self.s.candidate not in (None, target):
            self.drop_candidate()
        # Mark what the spec asks for as rolled back, so it does not restart on the next call.
        if self.obs.revision != target:
            self.s = replace(
                self.s, rolled_back=self.obs.revision, rollback_reason=f"undone to revision {target}"
            )
        elif self.s.rolled_back == target:
            self.s = replace(self.s, rolled_back=None, rollback_reason="")
        if self.s.candidate != target:
            self.start(target)
        if target in self.obs.ready:
            self.skipped = True
            self.promote(f"undo to warm revision {target}")

    def follow_judging(self) -> None:
        """A step judged by other gates or evaluators than it began with starts its analysis again.

        Gates and evaluation are not part of the revision (editing them makes
        no new revision), but the evidence gathered under the old rules (their
        alpha, margins, slices) cannot be carried over to the new ones.
        """
        judged_by = judging_hash(self.spec)
        s = self.s
        if s.judged_by == judged_by:
            return
        if s.candidate is not None and s.step_started_at is not None and s.judged_by:
            self.s = replace(s, step_started_at=self.now, failures={}, last_analysis_at=None, last_analysis_from=None, verdicts=())
            self.event("AnalysisRestarted", f"revision {s.candidate}: gates or evaluation changed; the step's analysis starts again")
        self.s = replace(self.s, judged_by=judged_by)

    def follow_spec(self) -> None:
        """Start, supersede or cancel a rollout according to the revision the spec asks for."""
        wanted = self.obs.revision
        if wanted == self.s.rolled_back:
            return  # never retried by itself; an undo candidate, if any, goes on
        if wanted == self.s.stable:
            if self.s.candidate is None and (self.s.verdicts or self.s.failures):
                # A revert after a rollback: the last verdicts judged a revision
                # nobody is served by any more; a Healthy stack shows none.
                self.s = replace(self.s, verdicts=(), failures={})
            if self.s.candidate is not None:
                self.event(
                    "RolloutCancelled",
                    f"spec is back at stable revision {wanted}; {self.s.candidate} dropped",
                )
                self.drop_candidate()
            return
        if wanted == self.s.candidate:
            return
        if self.s.candidate is not None:
            self.event("RolloutSuperseded", f"revision {wanted} replaces candidate {self.s.candidate}")
            self.drop_candidate()
        self.start(wanted)

    def read_analysis(self) -> None:
        """Count consecutive failures from a new analysis; roll back at a gate's failureLimit."""
        a, s = self.obs.analysis, self.s
        if (
            a is None
            or a.candidate != s.candidate
            or s.step_started_at is None
            or a.taken_at <= s.step_started_at
            or a.window_start is None
            or a.window_start < s.step_started_at
        ):
            return  # evidence from before this step began (or of unknown age) never decides it
        if s.last_analysis_at is not None and a.taken_at <= s.last_analysis_at:
            return  # already counted: the same analysis must not count twice
        failures = dict(s.failures)
        for v in a.verdicts:
            if v.verdict == Verdict.FAIL:
                failures[v.key] = failures.get(v.key, 0) + 1
            elif v.verdict == Verdict.PASS:
                failures[v.key] = 0
            # Inconclusive leaves the count alone: it is neither evidence of failure nor of health.
        self.s = replace(
            s, failures=failures, last_analysis_at=a.taken_at, last_analysis_from=a.window_start, verdicts=a.verdicts
        )
        limits = {g.name: g.failure_limit for g in self.spec.gates}
        if s.step_index is not None and self.steps[s.step_index].evaluate:
            # A golden Job's verdict is final (one replay of fixed cases): another
            # look would see the same data, so its first Fail rolls back, and a
            # critical case's verdict rolls back even with no gate on its golden set.
            limits = {v.gate: 1 for v in a.verdicts}
        for v in a.verdicts:
            if v.verdict == Verdict.FAIL and v.gate in limits and failures[v.key] >= limits[v.gate]:
                if v.delta is not None:
                    # An evaluator gate: its message is the difference and its interval (a
                    # paired gate has no per-arm means to show).
                    why = f"{v.where} failed {failures[v.key]} consecutive analyses: {v.message}, threshold {v.threshold}"
                else:
                    why = (
                        f"{v.where} failed {failures[v.key]} consecutive analyses: value {v.value}, "
                        f"baseline {v.baseline}, threshold {v.threshold or '-'} ({v.message})"
                    )
                self.roll_back("GateFailed", why, v)
                return

    def progress(self) -> None:
        s = self.s
        if s.candidate is None:
            if self.manual:
                self.event("CommandIgnored", f"{self.manual.value}: no rollout in progress", WARNING)
            return
        if s.step_index is None:
            self.wait_for_pods()
            return
        self.read_analysis()
        if self.rollback:
            return
        if self.manual == Verb.PROMOTE_FULL:
            self.promote("promote-full by command")
        elif self.manual == Verb.PROMOTE:
            self.event("StepPromoted", "current step ended by command")
            self.advance()
        elif not self.s.paused and self.step_done() and not hold_reason(self.spec, self.s):
            self.advance()

    def wait_for_pods(self) -> None:
        s = self.s
        assert s.candidate is not None and s.candidate_since is not None
        if s.candidate in self.obs.ready:
            if self.manual == Verb.PROMOTE_FULL:
                self.promote("promote-full by command")
            elif not s.paused or self.manual == Verb.PROMOTE:
                self.enter(0)
            return
        why = self.obs.not_ready.get(s.candidate)
        if self.manual:
            self.event("CommandIgnored", f"{self.manual.value}: {why or 'candidate pods are not Ready yet'}", WARNING)
        deadline = parse_duration(self.spec.rollout.progress_deadline)
        if self.now - s.candidate_since >= deadline:
            self.roll_back(
                "ProgressDeadlineExceeded",
                f"not ready within progressDeadline {format_duration(deadline)}: {why}" if why
                else f"pods not Ready within progressDeadline {format_duration(deadline)}",
            )

    def step_done(self) -> bool:
        s = self.s
        assert s.step_index is not None and s.step_started_at is not None
        duration = step_duration(self.steps[s.step_index])
        return duration is not None and self.now >= s.step_started_at + duration

    # ---------------------------------------------------------------- result

    def settle_traffic(self) -> Traffic:
        s = self.s
        weight, shadow = 0, 0
        if s.candidate is not None and s.step_index is not None:
            weight, shadow = _weights(self.steps, s.step_index, s.ramp_weight)
        self.s = replace(s, candidate_weight=weight, shadow_percent=shadow)
        return Traffic(self.s.stable, self.s.candidate if weight or shadow else None, weight, shadow)

    def requeue_after(self) -> timedelta | None:
        """Time until the next timer: step end, next analysis, progress deadline, a scale-down.

        Timers already past (a step held by its gates) are left out, so a
        held step polls at the analysis interval instead of spinning.
        """
        s, now = self.s, self.now
        times = list(s.scale_down_at.values())
        if s.candidate is not None:
            times.append(now + parse_duration(self.spec.rollout.analysis_interval))
            if s.step_index is None and s.candidate_since is not None:
                times.append(s.candidate_since + parse_duration(self.spec.rollout.progress_deadline))
            if s.step_started_at is not None and self.spec.gates:
                times.append(s.step_started_at + self.min_window)  # the step's first analysis
            if s.step_index is not None and s.step_started_at is not None and not s.paused:
                duration = step_duration(self.steps[s.step_index])
                if duration is not None:
                    times.append(s.step_started_at + duration)
        return min((t - now for t in times if t > now), default=None)


def decide(
    spec: InferenceStackSpec,
    state: RolloutState,
    obs: Observations,
    now: datetime,
    min_window: timedelta = MIN_WINDOW,
) -> Decision:
    """The next rollout state and what to do about it. Pure and idempotent.

    ``min_window``: the operator's shortest useful analysis window (see
    ``analysis_window``), which is also when a step's first analysis is due.
    """
    run = _Run(spec, _normalise(spec, state, now), obs, now, min_window)
    run.follow_judging()
    if run.s.stable is None:
        # First deploy: nothing to roll out from; the revision is stable once Ready.
        if obs.revision in obs.ready:
            run.s = replace(run.s, stable=obs.revision)
            run.event("RevisionStable", f"revision {obs.revision} is Ready and serves 100%")
    else:
        run.command()
        if run.rollback is None:
            run.follow_spec()
            if run.rollback is None and not run.skipped:
                run.progress()
    old = Traffic(
        state.stable,
        state.candidate if state.candidate_weight or state.shadow_percent else None,
        state.candidate_weight,
        state.shadow_percent,
    )
    traffic = run.settle_traffic()
    return Decision(
        state=run.s,
        traffic=traffic,
        events=tuple(run.events),
        # Only a real change costs a write: the same step decided again rewrites nothing.
        rewrite_traffic=traffic != old and run.s.stable is not None,
        rollback=run.rollback,
        skipped_steps=run.skipped,
        requeue_after=run.requeue_after(),
        promoted=run.promoted,
    )


def _normalise(spec: InferenceStackSpec, state: RolloutState, now: datetime) -> RolloutState:
    """Drop expired scale-downs; clamp a step index that an edit of the steps left dangling."""
    warm = {
        k: v for k, v in state.scale_down_at.items() if v > now and k not in (state.stable, state.candidate)
    }
    index = state.step_index
    if index is not None and index >= len(spec.rollout.steps):
        index = len(spec.rollout.steps) - 1
    return replace(state, scale_down_at=warm, step_index=index)
