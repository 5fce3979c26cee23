"""Golden sets: cases replayed by a Job against the candidate and the stable revision.

An ``evaluate`` rollout step runs, before the candidate gets any traffic, one
Kubernetes Job per golden set it names. The Job (``python -m
inferstack.golden``, the operator's own image) sends every case to both
revisions exactly as the router would (their bundles), scores each answer by
the case's assertions and writes a small report to its termination message.
The operator reads that report and turns it into gate verdicts:

* a ``critical`` case that fails on the candidate: Fail at once, whatever
  the stable revision does (the rollback reason names the cases);
* otherwise each gate naming the golden set judges, per slice and over all
  cases, the paired differences d = pass(candidate) - pass(stable) on the
  same cases with the one-sample confidence sequence
  (``evaluation.judge(..., stable=None)``);
* a Job that failed or timed out, a report that cannot be read, or cases that
  changed under the Job: Inconclusive (the step holds, it never promotes).

Everything here is pure: parsing and scoring cases, the Job object, the
report's wire format and the verdicts. ``controller/golden.py`` does the I/O;
``golden/`` is the program the Job runs.

Why the Job's name is a hash of (stack, golden set, candidate, stable, case
content): an operator killed at any point and restarted computes the same
name, finds the Job it created before and reads its result instead of running
the cases a second time. Changing the cases makes a new Job.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import re2
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from inferstack import GROUP
from inferstack.api.v1alpha1 import Evaluator, InferenceStackSpec, RolloutStep
from inferstack.core import objects
from inferstack.core.config import OperatorConfig
from inferstack.core.evaluation import Arm, gate_slices, identity, judge, sequence_alpha
from inferstack.core.gates import AGGREGATE, GateVerdict, Verdict
from inferstack.core.revision import digest
from inferstack.core.trafficplan import RevisionBundle

# Bounds: a golden set is read whole by the operator (to hash it) and by the Job.
MAX_CASES: Final = 2000  # per golden set, over all its ConfigMap keys
MAX_LINE_BYTES: Final = 65_536  # one case (one JSON line)
MAX_ID_CHARS: Final = 64  # keeps the ids of failed cases readable, and the report small
MAX_REPORT_BYTES: Final = 4096  # the kubelet keeps at most 4096 bytes of a termination message
MAX_REPORTED_IDS: Final = 20  # failed critical ids in a report; the rest are counted
OTHER: Final = "other"  # a case whose slice is not declared, like a request's (router)

COMPONENT: Final = "golden"
LABEL_EVALUATOR: Final = f"{GROUP}/evaluator"
LABEL_BASELINE: Final = f"{GROUP}/baseline"
CONTAINER: Final = "golden"
CASES_DIR: Final = "/etc/inferstack/golden"  # where the Job mounts the cases, read-only
REPORT_PATH: Final = "/dev/termination-log"
# The runner's environment (the e2e job runner maps CASES_DIR and REPORT to local files).
ENV_CONFIG: Final = "INFERSTACK_GOLDEN_CONFIG"
ENV_CASES_DIR: Final = "INFERSTACK_GOLDEN_CASES_DIR"
ENV_REPORT: Final = "INFERSTACK_GOLDEN_REPORT"
ENV_API_KEY: Final = {"candidate": "INFERSTACK_GOLDEN_CANDIDATE_API_KEY", "stable": "INFERSTACK_GOLDEN_STABLE_API_KEY"}
COMMAND: Final = ["python", "-m", "inferstack.golden"]
RUN_AS_USER: Final = 65532  # "nonroot" of distroless-style images; any non-zero uid works


class CaseError(ValueError):
    """A golden set that cannot be used, with the file and line at fault."""


# --------------------------------------------------------------------- cases

ASSERTION_KINDS: Final = ("contains", "notContains", "regex", "equals")
_CASE_KEYS: Final = frozenset({"id", "slice", "messages", "expected", "assertions", "critical"})


@dataclass(frozen=True)
class Assertion:
    kind: str  # one of ASSERTION_KINDS
    value: str


@dataclass(frozen=True)
class Case:
    id: str
    slice: str  # a declared slice, or OTHER
    messages: tuple[Mapping[str, Any], ...]
    assertions: tuple[Assertion, ...]
    critical: bool = False


def _re2(pattern: str) -> Any:
    # RE2 like the router's rule checks: linear time, so a case cannot stall the Job.
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options=options)


def _assertion(raw: Any, where: str) -> Assertion:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise CaseError(f"{where}: an assertion is one of {{{', '.join(ASSERTION_KINDS)}: <text>}}, got {json.dumps(raw)[:80]}")
    ((kind, value),) = raw.items()
    if kind not in ASSERTION_KINDS:
        raise CaseError(f"{where}: unknown assertion {kind!r}; known: {', '.join(ASSERTION_KINDS)}")
    if not isinstance(value, str) or not value:
        raise CaseError(f"{where}: assertion {kind} needs a non-empty string")
    if kind == "regex":
        try:
            _re2(value)
        except re2.error as e:
            raise CaseError(f"{where}: regex {value!r} is not a valid RE2 pattern: {e}") from e
    return Assertion(kind, value)


def _messages(raw: Any, where: str) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(raw, list) or not raw:
        raise CaseError(f"{where}: messages must be a non-empty list of {{role, content}}")
    for m in raw:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise CaseError(f"{where}: every message needs a string role and content")
    return tuple(raw)


def parse_case(line: str, where: str, slices: Sequence[str]) -> Case:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as e:
        raise CaseError(f"{where}: not JSON: {e.msg} at column {e.colno}") from e
    if not isinstance(raw, dict):
        raise CaseError(f"{where}: a case is a JSON object")
    if unknown := sorted(set(raw) - _CASE_KEYS):
        raise CaseError(f"{where}: unknown field {unknown[0]!r}; a case has {', '.join(sorted(_CASE_KEYS))}")
    case_id = raw.get("id")
    if not isinstance(case_id, str) or not case_id or len(case_id) > MAX_ID_CHARS or not case_id.isprintable():
        raise CaseError(f"{where}: id must be a printable string of 1 to {MAX_ID_CHARS} characters")
    where = f"{where} (case {case_id})"
    slice_ = raw.get("slice", OTHER)
    if not isinstance(slice_, str):
        raise CaseError(f"{where}: slice must be a string")
    assertions = raw.get("assertions")
    if assertions is not None and not isinstance(assertions, list):
        raise CaseError(f"{where}: assertions must be a list")
    checks = tuple(_assertion(a, where) for a in assertions or [])
    expected = raw.get("expected")
    if expected is not None and (not isinstance(expected, str) or not expected):
        raise CaseError(f"{where}: expected must be a non-empty string")
    if not checks:
        if expected is None:
            raise CaseError(f"{where}: nothing to check; give expected or assertions")
        checks = (Assertion("contains", expected),)  # expected alone: the answer contains it
    critical = raw.get("critical", False)
    if not isinstance(critical, bool):
        raise CaseError(f"{where}: critical must be true or false")
    return Case(
        id=case_id,
        # Cardinality of the report's slices is bounded by the spec, as in the router.
        slice=slice_ if slice_ in slices else OTHER,
        messages=_messages(raw.get("messages"), where),
        assertions=checks,
        critical=critical,
    )


def parse_cases(files: Sequence[tuple[str, str]], slices: Sequence[str]) -> list[Case]:
    """Every case of a golden set from its (source, JSON Lines text) files; raises CaseError.

    Blank lines are skipped; ids must be unique across the files.
    """
    cases: list[Case] = []
    seen: dict[str, str] = {}
    for source, text in files:
        for number, line in enumerate(text.splitlines(), start=1):
            where = f"{source} line {number}"
            if len(line.encode()) > MAX_LINE_BYTES:
                raise CaseError(f"{where}: {len(line.encode())} bytes; a case may have at most {MAX_LINE_BYTES}")
            if not line.strip():
                continue
            case = parse_case(line, where, slices)
            if case.id in seen:
                raise CaseError(f"{where}: id {case.id!r} repeats {seen[case.id]}")
            seen[case.id] = where
            cases.append(case)
            if len(cases) > MAX_CASES:
                raise CaseError(f"{where}: more than {MAX_CASES} cases in one golden set")
    if not cases:
        raise CaseError(f"{', '.join(s for s, _ in files)}: no cases")
    return cases


def cases_hash(files: Sequence[tuple[str, str]]) -> str:
    """The identity of a golden set's content (shown in the Job's labels and the report)."""
    return digest([[source, text] for source, text in files])[:16]


def passes(case: Case, answer: str) -> bool:
    """Whether ``answer`` satisfies every assertion of ``case`` (case-sensitive, like promptfoo's)."""
    for a in case.assertions:
        if a.kind == "contains" and a.value not in answer:
            return False
        if a.kind == "notContains" and a.value in answer:
            return False
        if a.kind == "equals" and answer.strip() != a.value.strip():
            return False
        if a.kind == "regex" and _re2(a.value).search(answer) is None:
            return False
    return True


# --------------------------------------------------------------- the report


@dataclass(frozen=True)
class CaseResult:
    """One case on both revisions: pass/fail, or None when the request errored."""

    case: Case
    candidate: bool | None
    stable: bool | None
    error: str = ""


@dataclass(frozen=True)
class SliceCounts:
    """Pairs of one slice: n, Σd, Σd² of d = pass(candidate) - pass(stable), and both pass counts."""

    pairs: int = 0
    diff_sum: int = 0
    diff_squares: int = 0
    candidate_passes: int = 0
    stable_passes: int = 0

    @property
    def wins(self) -> int:
        """Pairs the candidate passed and the stable revision failed (d = +1): (Σd² + Σd)/2."""
        return (self.diff_squares + self.diff_sum) // 2

    @property
    def losses(self) -> int:
        """Pairs the candidate failed and the stable revision passed (d = -1): (Σd² - Σd)/2."""
        return (self.diff_squares - self.diff_sum) // 2

    def __add__(self, o: SliceCounts) -> SliceCounts:
        return SliceCounts(
            self.pairs + o.pairs,
            self.diff_sum + o.diff_sum,
            self.diff_squares + o.diff_squares,
            self.candidate_passes + o.candidate_passes,
            self.stable_passes + o.stable_passes,
        )


class ReportError(ValueError):
    """A termination message that is not a golden report."""


@dataclass(frozen=True)
class Report:
    """What a golden Job found; its wire form is the pod's termination message (≤ 4096 bytes)."""

    cases_hash: str
    cases: int
    slices: Mapping[str, SliceCounts] = field(default_factory=dict)
    critical_failed: tuple[str, ...] = ()  # on the candidate
    critical_failed_more: int = 0  # beyond the ids listed
    critical_errors: tuple[str, ...] = ()  # critical cases whose candidate request errored
    critical_errors_more: int = 0
    errors: int = 0  # cases left out of the pairs because a request errored
    error: str = ""  # the first request error, or why the Job could not run at all

    def total(self) -> SliceCounts:
        return sum(self.slices.values(), SliceCounts())

    def _wire(self) -> dict[str, Any]:
        return {
            "v": 1,
            "hash": self.cases_hash,
            "cases": self.cases,
            "slices": {k: [c.pairs, c.diff_sum, c.diff_squares, c.candidate_passes, c.stable_passes] for k, c in sorted(self.slices.items())},
            "criticalFailed": list(self.critical_failed),
            "criticalFailedMore": self.critical_failed_more,
            "criticalErrors": list(self.critical_errors),
            "criticalErrorsMore": self.critical_errors_more,
            "errors": self.errors,
            "error": self.error,
        }

    def to_message(self) -> str:
        """Compact JSON of at most MAX_REPORT_BYTES: ids and the error text are shortened to fit, counts never."""
        r = self
        while True:
            text = json.dumps(r._wire(), separators=(",", ":"), ensure_ascii=False)
            if len(text.encode()) <= MAX_REPORT_BYTES:
                return text
            if r.critical_errors:
                r = replace(r, critical_errors=r.critical_errors[:-1], critical_errors_more=r.critical_errors_more + 1)
            elif r.critical_failed:
                r = replace(r, critical_failed=r.critical_failed[:-1], critical_failed_more=r.critical_failed_more + 1)
            elif r.error:
                r = replace(r, error=r.error[: len(r.error) // 2])
            else:  # cannot happen within the bounds (slices ≤ 33, names ≤ 63 characters)
                raise ValueError("golden report does not fit a termination message")

    @classmethod
    def parse(cls, text: str | None) -> Report:
        if not text:
            raise ReportError("the Job's pod left no termination message")
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict) or raw.get("v") != 1:
                raise ReportError("not a golden report (version 1)")
            return cls(
                cases_hash=str(raw["hash"]),
                cases=int(raw["cases"]),
                slices={str(k): _slice_counts(v) for k, v in raw["slices"].items()},
                critical_failed=tuple(str(x) for x in raw.get("criticalFailed", [])),
                critical_failed_more=int(raw.get("criticalFailedMore", 0)),
                critical_errors=tuple(str(x) for x in raw.get("criticalErrors", [])),
                critical_errors_more=int(raw.get("criticalErrorsMore", 0)),
                errors=int(raw.get("errors", 0)),
                error=str(raw.get("error", "")),
            )
        except ReportError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ReportError(f"unreadable golden report: {type(e).__name__}: {e}"[:200]) from e


def _slice_counts(raw: Any) -> SliceCounts:
    if not isinstance(raw, list) or len(raw) != 5:
        raise ValueError(f"slice counters are [n, Σd, Σd², candidate passes, stable passes], got {raw!r}"[:100])
    return SliceCounts(*(int(x) for x in raw))


def build_report(hash_: str, results: Iterable[CaseResult]) -> Report:
    """Tally case results: pairs per slice (both requests answered), critical failures, errors."""
    slices: dict[str, SliceCounts] = {}
    failed, unchecked, errors, first_error, cases = [], [], 0, "", 0
    for r in results:
        cases += 1
        if r.case.critical and r.candidate is False:
            failed.append(r.case.id)
        if r.case.critical and r.candidate is None:
            unchecked.append(r.case.id)
        if r.candidate is None or r.stable is None:
            # An error is neither a pass nor a failure: the case leaves the pairs.
            errors += 1
            first_error = first_error or f"case {r.case.id}: {r.error}"
            continue
        d = int(r.candidate) - int(r.stable)
        slices[r.case.slice] = slices.get(r.case.slice, SliceCounts()) + SliceCounts(1, d, d * d, int(r.candidate), int(r.stable))
    return Report(
        cases_hash=hash_,
        cases=cases,
        slices=slices,
        critical_failed=tuple(failed[:MAX_REPORTED_IDS]),
        critical_failed_more=max(0, len(failed) - MAX_REPORTED_IDS),
        critical_errors=tuple(unchecked[:MAX_REPORTED_IDS]),
        critical_errors_more=max(0, len(unchecked) - MAX_REPORTED_IDS),
        errors=errors,
        error=first_error[:500],
    )


# ---------------------------------------------------------- what the step runs


def step_golden_sets(spec: InferenceStackSpec, step: RolloutStep) -> list[Evaluator]:
    """The golden-set evaluators an evaluate step runs (its list, or all of them), in spec order."""
    if step.evaluate is None:
        return []
    wanted = set(step.evaluate.evaluators)
    return [e for e in spec.evaluation.evaluators if e.golden_set is not None and (not wanted or e.name in wanted)]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class CaseFile(_Model):
    path: str  # relative to the cases directory
    source: str  # "<configmap>/<key>", for messages


class RunnerConfig(_Model):
    """What the Job's program is told, as JSON in ENV_CONFIG. Never a secret: API keys come by secretKeyRef."""

    stack: str
    namespace: str
    evaluator: str
    cases_hash: str
    files: tuple[CaseFile, ...]
    slices: tuple[str, ...] = ()
    concurrency: int = Field(4, ge=1, le=64)
    request_timeout_seconds: float = Field(120.0, gt=0)
    candidate: RevisionBundle
    stable: RevisionBundle


def case_files(evaluator: Evaluator) -> list[CaseFile]:
    assert evaluator.golden_set is not None
    return [CaseFile(path=f"{i}.jsonl", source=f"{r.name}/{r.key}") for i, r in enumerate(evaluator.golden_set.config_map_refs)]


def declared_slices(spec: InferenceStackSpec) -> tuple[str, ...]:
    return tuple(spec.evaluation.slices.values) if spec.evaluation.slices else ()


def job_name(stack: str, evaluator: str, candidate: str, stable: str, hash_: str) -> str:
    """Deterministic: a restarted operator finds the Job it created; ≤ 63 characters (it is a label value too)."""
    h = digest([stack, evaluator, candidate, stable, hash_])[:10]
    return f"{stack[:45].rstrip('-')}-golden-{h}"


def build_job(
    stack: dict[str, Any],
    spec: InferenceStackSpec,
    evaluator: Evaluator,
    candidate: RevisionBundle,
    stable: RevisionBundle,
    hash_: str,
    timeout_seconds: int,
    config: OperatorConfig,
) -> dict[str, Any]:
    """The Job that replays ``evaluator``'s golden set; owned by the stack, so it goes with it."""
    assert evaluator.golden_set is not None
    meta = stack["metadata"]
    name = job_name(meta["name"], evaluator.name, candidate.revision, stable.revision, hash_)
    gj = config.golden_job
    runner = RunnerConfig(
        stack=meta["name"],
        namespace=meta["namespace"],
        evaluator=evaluator.name,
        cases_hash=hash_,
        files=tuple(case_files(evaluator)),
        slices=declared_slices(spec),
        concurrency=evaluator.golden_set.concurrency,
        request_timeout_seconds=gj.request_timeout_seconds,
        # The plan's bundles carry only a reference to an API key, never the key.
        candidate=candidate.model_copy(update={"api_key": None}),
        stable=stable.model_copy(update={"api_key": None}),
    )
    env: list[dict[str, Any]] = [
        {"name": ENV_CONFIG, "value": runner.model_dump_json(by_alias=True)},
        {"name": ENV_CASES_DIR, "value": CASES_DIR},
        {"name": ENV_REPORT, "value": REPORT_PATH},
    ]
    for role, bundle in (("candidate", candidate), ("stable", stable)):
        if ref := bundle.api_key_secret_ref:
            # Resolved by the kubelet: the key is in neither the Job spec nor the operator's hands.
            env.append({"name": ENV_API_KEY[role], "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    labels = objects.labels(meta["name"], candidate.revision, COMPONENT)
    labels |= {LABEL_EVALUATOR: evaluator.name, LABEL_BASELINE: stable.revision}
    sources = [
        {"configMap": {"name": r.name, "items": [{"key": r.key, "path": f.path}]}}
        for r, f in zip(evaluator.golden_set.config_map_refs, case_files(evaluator), strict=True)
    ]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # The runner talks to model servers only; it needs no API access at all.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": CONTAINER,
                "image": gj.image,
                "imagePullPolicy": gj.image_pull_policy,
                "command": list(COMMAND),
                "env": env,
                "resources": gj.resources,
                "terminationMessagePath": REPORT_PATH,
                "terminationMessagePolicy": "File",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [{"name": "cases", "mountPath": CASES_DIR, "readOnly": True}],
            }
        ],
        "volumes": [{"name": "cases", "projected": {"sources": sources}}],
    }
    if gj.node_selector:
        pod_spec["nodeSelector"] = dict(gj.node_selector)
    if gj.tolerations:
        pod_spec["tolerations"] = list(gj.tolerations)
    if gj.priority_class_name:
        pod_spec["priorityClassName"] = gj.priority_class_name
    job_meta = objects.metadata(stack, name, candidate.revision, COMPONENT)
    job_meta["labels"] = labels
    job_meta["annotations"] = {f"{GROUP}/cases-hash": hash_}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": job_meta,
        "spec": {
            # Never retried: a second pod would send every case again.
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, timeout_seconds),
            **({"ttlSecondsAfterFinished": gj.ttl_seconds_after_finished} if gj.ttl_seconds_after_finished is not None else {}),
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }


# ---------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class JobState:
    """A Job's outcome from its status: not finished, succeeded, or failed with a reason."""

    finished: bool = False
    succeeded: bool = False
    reason: str = ""


def job_state(status: Mapping[str, Any] | None) -> JobState:
    conditions = {c.get("type"): c for c in (status or {}).get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in conditions:
        return JobState(finished=True, succeeded=True)
    if failed := conditions.get("Failed") or conditions.get("FailureTarget"):
        reason = failed.get("reason") or "Failed"
        message = failed.get("message") or ""
        return JobState(finished=True, reason=f"{reason}: {message}" if message else reason)
    return JobState()


def _gate_names(spec: InferenceStackSpec, evaluator: str) -> list[str]:
    # A golden set with no gate on it still blocks on critical cases: its
    # verdict then carries the evaluator's name.
    return [g.name for g in spec.gates if g.evaluator == evaluator] or [evaluator]


def _ids(ids: Sequence[str], more: int) -> str:
    return ", ".join(ids) + (f" (+{more} more)" if more else "")


def inconclusive(spec: InferenceStackSpec, evaluator: str, why: str) -> list[GateVerdict]:
    """The verdicts of a golden set that could not be judged: they hold the step, never promote it."""
    return [GateVerdict(g, AGGREGATE, Verdict.INCONCLUSIVE, message=f"golden set {evaluator}: {why}") for g in _gate_names(spec, evaluator)]


def verdicts(spec: InferenceStackSpec, evaluator: str, report: Report, expected_hash: str) -> list[GateVerdict]:
    """Gate verdicts from a golden Job's report.

    A verdict judged on the replayed cases names them in ``evaluated_by``
    (``evaluation.identity``: the golden set and its content hash), so it can
    be reproduced.
    """
    if report.cases_hash != expected_hash:
        return inconclusive(spec, evaluator, f"the Job replayed cases {report.cases_hash}, not {expected_hash} (they changed)")
    if report.error and not report.cases:
        return inconclusive(spec, evaluator, f"the Job could not run: {report.error}")
    by = identity(next((e for e in spec.evaluation.evaluators if e.name == evaluator), None), report.cases_hash)
    if report.critical_failed:
        ids = _ids(report.critical_failed, report.critical_failed_more)
        why = f"golden set {evaluator}: critical case failed on the candidate: {ids}"
        return [
            GateVerdict(g, AGGREGATE, Verdict.FAIL, threshold="every critical case passes", message=why, evaluated_by=by)
            for g in _gate_names(spec, evaluator)
        ]
    if report.critical_errors:
        ids = _ids(report.critical_errors, report.critical_errors_more)
        return inconclusive(spec, evaluator, f"critical case could not be checked (request failed): {ids}; {report.error}")
    gates = [g for g in spec.gates if g.evaluator == evaluator]
    if not gates:
        total = report.total()
        return [
            GateVerdict(
                evaluator, AGGREGATE, Verdict.PASS, value=_rate(total.candidate_passes, total.pairs),
                baseline=_rate(total.stable_passes, total.pairs), samples=total.pairs,
                message=f"golden set {evaluator}: {report.cases} cases, every critical case passed", evaluated_by=by,
            )
        ]  # fmt: skip
    alpha = sequence_alpha(spec)
    out = []
    for gate in gates:
        for slice_ in gate_slices(gate, spec):
            c = report.total() if slice_ == AGGREGATE else report.slices.get(slice_, SliceCounts())
            # A paired Arm is (pairs, wins, losses), what evaluation.judge reads for d in {-1, 0, +1}.
            v = judge(gate, slice_, Arm(float(c.pairs), float(c.wins), float(c.losses)), None, alpha, by)
            note = f" ({report.errors} cases errored)" if report.errors else ""
            out.append(
                replace(
                    v,
                    # Both arms' pass rates on the same cases, for the status table.
                    value=_rate(c.candidate_passes, c.pairs),
                    baseline=_rate(c.stable_passes, c.pairs),
                    samples=float(c.pairs),
                    baseline_samples=float(c.pairs),
                    message=v.message + note,
                )
            )
    return out


def _rate(passes: int, n: int) -> float | None:
    return passes / n if n else None
