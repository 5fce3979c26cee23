"""Notifications: what the rollout decided that a human should hear about, as webhook payloads.

Pure: ``notifications`` reads a ``Decision`` of ``core/rollout.decide`` (its
promotion, its rollback, the step it started) and never the stack's status,
so a notification exists only for a decision, and the same stack seen again
makes none. ``targets`` says where each one goes: the stack's own webhooks
(``spec.notifications``) and the operator's cluster-wide ones.

Delivery guarantee (controller/notify.py does the I/O): a notification is
queued by the pass whose status write recorded its decision, and by no other
pass (a later pass decides from that status, in which it already happened).
So it is sent **at most once per decision across operator restarts**: one
still queued when the operator dies, or dropped from a full queue (counted),
is not sent. While the operator runs it is retried with backoff until a 2xx,
so a receiver can see the same ``id`` twice (a 2xx lost on the way back):
de-duplicate on ``id``, which is the same for every attempt and webhook.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from inferstack.api.v1alpha1 import InferenceStackSpec, NotificationEvent, Webhook
from inferstack.core.config import WebhookConfig
from inferstack.core.revision import digest
from inferstack.core.rollout import Decision, RolloutState, step_duration

SCHEMA: Final = "inferstack.dev/notification/v1"


@dataclass(frozen=True)
class Notification:
    kind: NotificationEvent
    namespace: str
    stack: str
    revision: str  # the revision it is about: promoted, rolled back, paused or stuck
    stable: str | None  # the stable revision after the decision
    previous_stable: str | None  # before it (a promotion replaces it)
    reason: str  # GateFailed | ProgressDeadlineExceeded | Aborted | the promotion's cause | the step
    message: str
    at: datetime
    gate: str | None = None
    slice: str | None = None
    value: float | None = None
    baseline: float | None = None
    threshold: str | None = None
    delta: float | None = None
    interval: tuple[float, float] | None = None  # evaluator gates: the anytime-valid interval on delta
    step: str | None = None

    @property
    def id(self) -> str:
        """The same for every attempt and webhook of one decision: what receivers de-duplicate on."""
        key = [self.kind.value, self.namespace, self.stack, self.revision, self.at.isoformat()]
        return digest(key)[:24]

    def text(self) -> str:
        """Slack-compatible ``text``: one line, the essentials first."""
        where = f"{self.namespace}/{self.stack}"
        if self.kind == NotificationEvent.PROMOTED:
            return f":white_check_mark: {where}: revision {self.revision} promoted (was {self.previous_stable})"
        if self.kind == NotificationEvent.ROLLED_BACK:
            gate = ""
            if self.gate:
                gate = f" gate {self.gate}" + (f", slice {self.slice}" if self.slice else ", all slices")
                if self.interval is not None:
                    gate += f", delta {self.delta:.3g} [{self.interval[0]:.3g}, {self.interval[1]:.3g}]"
                elif self.value is not None:
                    gate += f", value {self.value:.6g} vs baseline {self.baseline if self.baseline is None else f'{self.baseline:.6g}'}"
                gate += ";"
            return f":rotating_light: {where}: revision {self.revision} rolled back to {self.stable} ({self.reason});{gate} {self.message}"
        if self.kind == NotificationEvent.AWAITING_PROMOTION:
            return f":pause_button: {where}: revision {self.revision} paused at {self.step}; `kubectl istack promote {self.stack} -n {self.namespace}` to continue"
        return f":hourglass: {where}: revision {self.revision} is stuck: {self.message}"

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "id": self.id,
            "kind": self.kind.value,
            "namespace": self.namespace,
            "stack": self.stack,
            "revision": self.revision,
            "stableRevision": self.stable,
            "previousStableRevision": self.previous_stable,
            "reason": self.reason,
            "message": self.message,
            "at": self.at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "text": self.text(),
        }
        if self.step is not None:
            out["step"] = self.step
        if self.gate is not None:
            out["gate"] = {
                "name": self.gate,
                "slice": self.slice or "",  # "": all traffic
                "value": self.value,
                "baseline": self.baseline,
                "threshold": self.threshold,
                "delta": self.delta,
                "interval": list(self.interval) if self.interval is not None else None,
            }
        return out


def notifications(
    namespace: str,
    stack: str,
    spec: InferenceStackSpec,
    before: RolloutState,
    decision: Decision,
    now: datetime,
    *,
    first_revision_stuck: str | None = None,
) -> list[Notification]:
    """What ``decision`` (made from ``before``) tells a human.

    ``first_revision_stuck``: the first revision, when this pass records that
    its pods missed the progress deadline (no rollout: ``status.summarize``
    shows it as Failed, ``decide`` has nothing to roll back to).
    """
    after = decision.state
    out: list[Notification] = []

    def note(kind: NotificationEvent, revision: str, stable: str | None, reason: str, message: str, **extra: Any) -> Notification:
        return Notification(kind, namespace, stack, revision, stable, before.stable, reason, message, now, **extra)

    if decision.promoted is not None:
        message = next((e.message for e in decision.events if e.reason == "Promoted"), "")
        out.append(note(NotificationEvent.PROMOTED, decision.promoted, after.stable, "Promoted", message))
    if (rb := decision.rollback) is not None:
        kind = NotificationEvent.STUCK if rb.cause == "ProgressDeadlineExceeded" else NotificationEvent.ROLLED_BACK
        # The verdict behind a gate failure, as status.gates will show it: its interval too.
        verdict = next((v for v in after.verdicts if rb.gate is not None and v.gate == rb.gate and v.slice == rb.slice), None)
        interval = None
        if verdict is not None and verdict.delta_lower is not None and verdict.delta_upper is not None:
            interval = (verdict.delta_lower, verdict.delta_upper)
        out.append(note(
            kind, rb.revision, after.stable, rb.cause, rb.message,
            gate=rb.gate, slice=rb.slice, value=rb.value, baseline=rb.baseline, threshold=rb.threshold or None,
            delta=verdict.delta if verdict is not None else None, interval=interval,
        ))  # fmt: skip
    started = any(e.reason == "StepStarted" for e in decision.events)
    if started and after.candidate is not None and after.step_index is not None:
        step = spec.rollout.steps[after.step_index]
        if step.pause is not None and step_duration(step) is None:
            label = f"step {after.step_index + 1}/{len(spec.rollout.steps)} (pause)"
            out.append(note(
                NotificationEvent.AWAITING_PROMOTION, after.candidate, after.stable,
                "PauseStep", "pause step without duration: promote to continue", step=label,
            ))  # fmt: skip
    if first_revision_stuck is not None:
        out.append(note(
            NotificationEvent.STUCK, first_revision_stuck, None, "ProgressDeadlineExceeded",
            f"revision {first_revision_stuck}: pods missed the progress deadline (no stable revision yet)",
        ))  # fmt: skip
    return out


@dataclass(frozen=True)
class SecretKey:
    namespace: str
    name: str
    key: str


@dataclass(frozen=True)
class Target:
    """One webhook to POST one notification to; secrets are names here, read at delivery."""

    name: str  # "stack/<name>" or "cluster/<name>": what logs and metrics show, never the URL
    url: str | None
    url_secret: SecretKey | None
    token_secret: SecretKey | None


def _wants(events: Iterable[NotificationEvent], kind: NotificationEvent) -> bool:
    events = list(events)
    return not events or kind in events


def targets(
    namespace: str, kind: NotificationEvent, stack_webhooks: Iterable[Webhook], cluster_webhooks: Iterable[WebhookConfig]
) -> list[Target]:
    """Where a notification of ``kind`` about a stack of ``namespace`` goes."""
    out = []
    for w in stack_webhooks:
        if _wants(w.events, kind):
            out.append(Target(
                f"stack/{w.name}", w.url,
                SecretKey(namespace, w.url_secret_ref.name, w.url_secret_ref.key) if w.url_secret_ref else None,
                SecretKey(namespace, w.token_secret_ref.name, w.token_secret_ref.key) if w.token_secret_ref else None,
            ))  # fmt: skip
    for c in cluster_webhooks:
        if _wants(c.events, kind):
            out.append(Target(
                f"cluster/{c.name}", c.url,
                SecretKey(c.url_secret_ref.namespace, c.url_secret_ref.name, c.url_secret_ref.key) if c.url_secret_ref else None,
                SecretKey(c.token_secret_ref.namespace, c.token_secret_ref.name, c.token_secret_ref.key) if c.token_secret_ref else None,
            ))  # fmt: skip
    return out
