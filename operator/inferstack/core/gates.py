"""Gate verdicts: is the candidate good enough, judged from numbers already measured.

Semantics (docs/rollout.md has the user-facing version):

* A gate is evaluated once per slice it lists **and** once over all traffic
  (slice ``""``). The aggregate catches traffic outside every listed slice; a
  failing slice fails the gate even when the aggregate passes.
* ``threshold``: absolute ``min`` / ``max`` on the candidate's value.
* ``compare``: relative to the stable revision's value of the same query.
  ``maxRelativeDrop`` d fails when candidate < baseline x (1 - d) (higher is
  better); ``maxRelativeIncrease`` i fails when candidate > baseline x (1 + i)
  (lower is better).
* Missing data is never a pass: no value, NaN or infinite value, missing
  baseline, a query error, or fewer samples than ``minSamples`` give
  ``Inconclusive``. The rollout holds on it, unless the gate says
  ``onInconclusive: Fail``, in which case the verdict is ``Fail``.

Pure: the numbers come in (``Measurement``), verdicts go out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from inferstack.api.v1alpha1 import Gate, GateResult, OnInconclusive

AGGREGATE: Final = ""  # slice key of the evaluation over all traffic


class Verdict(StrEnum):
    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"


@dataclass(frozen=True)
class Measurement:
    """What Prometheus said for one gate and slice; ``error`` when it said nothing usable."""

    value: float | None = None
    baseline: float | None = None
    samples: float | None = None
    error: str = ""


@dataclass(frozen=True)
class GateVerdict:
    gate: str
    slice: str
    verdict: Verdict
    value: float | None = None
    baseline: float | None = None
    threshold: str = ""
    samples: float | None = None
    message: str = ""
    # Evaluator gates (core/evaluation.py): the stable arm's count, and the
    # difference of means with its anytime-valid interval.
    baseline_samples: float | None = None
    delta: float | None = None
    delta_lower: float | None = None
    delta_upper: float | None = None
    # What produced the evidence, so the verdict can be reproduced: the judge
    # (mode, model, criteria hash) or the golden set's content hash.
    evaluated_by: str = ""

    @property
    def key(self) -> str:
        """Key of this evaluation in ``status.rollout.failures``: ``gate`` or ``gate/slice``."""
        return failure_key(self.gate, self.slice)

    @property
    def where(self) -> str:
        """``gate latency, slice billing`` for messages."""
        return f"gate {self.gate}, " + (f"slice {self.slice}" if self.slice else "all slices")

    def to_status(self) -> dict[str, Any]:
        return GateResult(
            gate=self.gate,
            slice=self.slice,
            verdict=self.verdict.value,
            value=self.value,
            baseline=self.baseline,
            threshold=self.threshold,
            samples=self.samples,
            baseline_samples=self.baseline_samples,
            delta=self.delta,
            delta_lower=self.delta_lower,
            delta_upper=self.delta_upper,
            message=self.message,
            evaluated_by=self.evaluated_by or None,
        ).model_dump(by_alias=True, exclude_none=True)

    @classmethod
    def from_status(cls, data: Mapping[str, Any]) -> GateVerdict:
        r = GateResult.model_validate(data)
        return cls(
            r.gate, r.slice, Verdict(r.verdict), r.value, r.baseline, r.threshold, r.samples, r.message,
            r.baseline_samples, r.delta, r.delta_lower, r.delta_upper, r.evaluated_by or "",
        )  # fmt: skip


def failure_key(gate: str, slice_: str) -> str:
    return f"{gate}/{slice_}" if slice_ else gate


def evaluations(gate: Gate) -> list[str]:
    """Slice keys a gate is evaluated for: each listed slice, then the aggregate."""
    return [*gate.slices, AGGREGATE]


def _usable(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _fmt(x: float | None) -> str:
    return "none" if x is None else f"{x:.6g}"


def bounds(gate: Gate, baseline: float | None) -> tuple[float | None, float | None]:
    """(lowest passing value, highest passing value); None where unbounded or unknown."""
    if gate.threshold is not None:
        return gate.threshold.min, gate.threshold.max
    assert gate.compare is not None  # the schema demands exactly one of threshold / compare
    if not _usable(baseline):
        return None, None
    assert baseline is not None
    c = gate.compare
    low = baseline * (1 - c.max_relative_drop) if c.max_relative_drop is not None else None
    high = baseline * (1 + c.max_relative_increase) if c.max_relative_increase is not None else None
    return low, high


def threshold_text(gate: Gate, baseline: float | None) -> str:
    """The rule in words and numbers, e.g. ``>= 0.855 (stable -5%)`` or ``<= 2.5``."""
    low, high = bounds(gate, baseline)
    if gate.threshold is not None:
        return ", ".join([f">= {_fmt(low)}"] * (low is not None) + [f"<= {_fmt(high)}"] * (high is not None))
    assert gate.compare is not None
    c, parts = gate.compare, []
    # "?" while the baseline is unknown: the relative rule still reads correctly.
    if c.max_relative_drop is not None:
        parts.append(f">= {_fmt(low) if low is not None else '?'} (stable -{c.max_relative_drop * 100:.4g}%)")
    if c.max_relative_increase is not None:
        parts.append(
            f"<= {_fmt(high) if high is not None else '?'} (stable +{c.max_relative_increase * 100:.4g}%)"
        )
    return ", ".join(parts)


def _inconclusive(gate: Gate, slice_: str, m: Measurement, threshold: str, why: str) -> GateVerdict:
    if gate.on_inconclusive == OnInconclusive.FAIL:
        verdict, why = Verdict.FAIL, f"inconclusive, and onInconclusive is Fail: {why}"
    else:
        verdict = Verdict.INCONCLUSIVE
    return GateVerdict(gate.name, slice_, verdict, m.value, m.baseline, threshold, m.samples, why)


def judge(gate: Gate, slice_: str, m: Measurement) -> GateVerdict:
    """The verdict of one gate on one slice."""
    threshold = threshold_text(gate, m.baseline)
    if m.error:
        return _inconclusive(gate, slice_, m, threshold, m.error)
    if not _usable(m.value):
        return _inconclusive(gate, slice_, m, threshold, f"no usable candidate value ({_fmt(m.value)})")
    if gate.min_samples > 0:  # the API refuses minSamples without a samplesQuery
        if not _usable(m.samples):
            return _inconclusive(gate, slice_, m, threshold, "no sample count")
        assert m.samples is not None
        if m.samples < gate.min_samples:
            return _inconclusive(
                gate, slice_, m, threshold, f"{_count(m.samples)} of {gate.min_samples} samples"
            )
    if gate.compare is not None and not _usable(m.baseline):
        return _inconclusive(gate, slice_, m, threshold, f"no usable baseline value ({_fmt(m.baseline)})")

    assert m.value is not None
    low, high = bounds(gate, m.baseline)
    if low is not None and m.value < low:
        message = f"{_fmt(m.value)} is below {_fmt(low)}"
    elif high is not None and m.value > high:
        message = f"{_fmt(m.value)} is above {_fmt(high)}"
    else:
        return GateVerdict(gate.name, slice_, Verdict.PASS, m.value, m.baseline, threshold, m.samples, "ok")
    return GateVerdict(gate.name, slice_, Verdict.FAIL, m.value, m.baseline, threshold, m.samples, message)


def evaluate_gates(
    gates: Iterable[Gate], measurements: Mapping[tuple[str, str], Measurement]
) -> list[GateVerdict]:
    """Verdicts for every (gate, slice) evaluation, in spec order.

    ``measurements`` is keyed by ``(gate name, slice)``; an evaluation with no
    entry is Inconclusive (it was never measured).
    """
    missing = Measurement(error="not measured")
    return [judge(g, s, measurements.get((g.name, s), missing)) for g in gates for s in evaluations(g)]


def _count(samples: float) -> str:
    """A sample count as Prometheus gives it: increase() extrapolates, so 2.67 is not "3"."""
    return f"{samples:.0f}" if samples == int(samples) else f"{samples:.1f}"
