"""Pure text formatting for ``kubectl istack``: dicts from the API server in, text out.

Every function takes objects as the API server returns them (camelCase
dicts: an InferenceStack, ControllerRevisions, Events) and the current time,
and returns plain text. No I/O here, so everything is tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from inferstack.core.rollout import COMMAND_ANNOTATION, COMMAND_ID_ANNOTATION, Verb

NONE: Final = "-"
MAX_EVENTS: Final = 10
MAX_CELL: Final = 60  # longer cells are cut in tables; `kubectl get -o yaml` has them whole
MAX_LAST_CELL: Final = 160  # the last column is not padded, so it may run longer


class CliError(Exception):
    """A failure to report to the user as one line, without a traceback."""


# ------------------------------------------------------------------- helpers


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 timestamp as Kubernetes writes it (``Z`` or an offset), or None."""
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def age(value: str | None, now: datetime) -> str:
    """Time since ``value`` the way kubectl prints it: 45s, 12m, 3h, 5d (two units while short)."""
    t = parse_time(value)
    if t is None:
        return NONE
    s = max(0, int((now - t).total_seconds()))
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 48:
        return f"{h}h" if h >= 8 else f"{h}h{m % 60}m"
    return f"{h // 24}d"


def number(value: float | None) -> str:
    """A gate value: four significant digits, integers without a decimal point."""
    if value is None:
        return NONE
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def cell(value: Any, limit: int = MAX_CELL) -> str:
    text = NONE if value is None or value == "" else " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by three spaces, like kubectl; the last column is not padded."""
    last = len(headers) - 1
    body = [[cell(v, MAX_LAST_CELL if i == last else MAX_CELL) for i, v in enumerate(row)] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *body]:
        padded = [v.ljust(widths[i]) for i, v in enumerate(row[:-1])] + [row[-1]]
        lines.append("   ".join(padded).rstrip())
    return "\n".join(lines)


def _short(revision: str | None) -> str:
    return revision or NONE


# -------------------------------------------------------------------- gates


def gate_counts(gates: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Gate evaluations by verdict: ``{"Pass": ["quality", "quality/en"], ...}``."""
    out: dict[str, list[str]] = {}
    for g in gates:
        where = f"{g.get('gate', '?')}/{g['slice']}" if g.get("slice") else str(g.get("gate", "?"))
        out.setdefault(str(g.get("verdict", "?")), []).append(where)
    return out


def gate_summary(status: Mapping[str, Any]) -> str:
    """One cell for ``list``: ``3/4 pass; fail: latency/en``."""
    gates = status.get("gates") or []
    if not gates:
        return NONE
    counts = gate_counts(gates)
    text = f"{len(counts.get('Pass', []))}/{len(gates)} pass"
    for verdict, label in (("Fail", "fail"), ("Inconclusive", "inconclusive")):
        if names := counts.get(verdict):
            text += f"; {label}: {','.join(names)}"
    return text


def difference(g: Mapping[str, Any]) -> str:
    """An evaluator gate's candidate minus stable and its anytime-valid interval: ``-0.08 [-0.13, -0.03]``."""
    if g.get("delta") is None:
        return NONE
    return f"{g['delta']:+.3f} [{g.get('deltaLower', float('-inf')):+.3f}, {g.get('deltaUpper', float('inf')):+.3f}]"


def samples(g: Mapping[str, Any]) -> str:
    """Candidate samples, and the stable revision's after a slash for an evaluator gate."""
    if g.get("baselineSamples") is None:
        return number(g.get("samples"))
    return f"{number(round(g.get('samples') or 0))}/{number(round(g['baselineSamples']))}"


def gates_table(status: Mapping[str, Any]) -> str:
    failures = (status.get("rollout") or {}).get("failures") or {}
    rows = []
    for g in status.get("gates") or []:
        key = f"{g.get('gate')}/{g['slice']}" if g.get("slice") else g.get("gate")
        rows.append(
            [
                g.get("gate"),
                g.get("slice") or "(all)",
                g.get("verdict"),
                number(g.get("value")),
                number(g.get("baseline")),
                difference(g),
                g.get("threshold"),
                samples(g),
                failures.get(key, 0),
                g.get("message"),
            ]
        )
    if not rows:
        return "  (no analysis yet)"
    headers = ["GATE", "SLICE", "VERDICT", "VALUE", "BASELINE", "DIFFERENCE", "THRESHOLD", "SAMPLES", "FAILURES", "MESSAGE"]
    return _indent(table(headers, rows)) + evaluated_by(status)


def evaluated_by(status: Mapping[str, Any]) -> str:
    """What produced each gate's samples (``status.gates[].evaluatedBy``: the judge's model and prompt hash,
    a golden set's cases hash), once per gate: a verdict is only as good as what judged it."""
    seen = dict.fromkeys((g.get("gate"), g["evaluatedBy"]) for g in status.get("gates") or [] if g.get("evaluatedBy"))
    if not seen:
        return ""
    return "\n" + _indent("\n".join(["Evaluated by:", *(f"  {gate}: {by}" for gate, by in seen)]))


# ------------------------------------------------------------------- status


def _indent(text: str, by: str = "  ") -> str:
    return "\n".join(by + line if line else line for line in text.splitlines())


def _step_line(stack: Mapping[str, Any]) -> str:
    status = stack.get("status") or {}
    rollout = status.get("rollout") or {}
    if not status.get("candidateRevision"):
        return NONE
    steps = ((stack.get("spec") or {}).get("rollout") or {}).get("steps") or []
    label = rollout.get("step") or "waiting for pods"
    index = rollout.get("stepIndex")
    return f"{index + 1}/{len(steps)} {label}" if index is not None and steps else label


def format_status(stack: Mapping[str, Any], events: Sequence[Mapping[str, Any]], now: datetime) -> str:
    """``kubectl istack status NAME``: everything about one stack's rollout on one screen."""
    meta = stack.get("metadata") or {}
    status = stack.get("status") or {}
    rollout = status.get("rollout") or {}
    traffic = status.get("traffic") or {}
    generation, observed = meta.get("generation"), status.get("observedGeneration")

    candidate = _short(status.get("candidateRevision"))
    if status.get("candidateRevision") and rollout.get("candidateSince"):
        candidate += f"  (for {age(rollout.get('candidateSince'), now)})"
    step = _step_line(stack)
    if status.get("candidateRevision") and rollout.get("stepStartedAt"):
        step += f"  (started {age(rollout.get('stepStartedAt'), now)} ago)"
    if rollout.get("paused") and "(paused)" not in step:
        step += "  [paused]"
    fields: list[tuple[str, Any]] = [
        ("Name", meta.get("name")),
        ("Namespace", meta.get("namespace")),
        ("Phase", status.get("phase") or "(not reconciled yet)"),
        ("Message", status.get("message") or NONE),
        ("Stable", _short(status.get("stableRevision"))),
        ("Candidate", candidate),
        ("Step", step),
        (
            "Traffic",
            f"stable {traffic.get('stableWeight', 100)}%, candidate {traffic.get('candidateWeight', 0)}%, "
            f"shadow {traffic.get('shadowPercent', 0)}% of requests",
        ),
        ("Cache namespace", status.get("cacheNamespace") or NONE),
        (
            "Last analysis",
            f"{age(rollout.get('lastAnalysisAt'), now)} ago" if rollout.get("lastAnalysisAt") else NONE,
        ),
    ]
    if status.get("rolledBackRevision"):
        fields.append(
            ("Rolled back", f"{status['rolledBackRevision']}: {rollout.get('rollbackReason') or NONE}")
        )
    if warm := rollout.get("scaleDownAt"):
        fields.append(("Kept warm", ", ".join(f"{rev} until {at}" for rev, at in sorted(warm.items()))))
    if rollout.get("lastCommand"):
        fields.append(("Last command", rollout["lastCommand"]))
    if pending := _pending_command(meta, rollout):
        fields.append(("Pending command", f"{pending} (not handled yet: is the operator running?)"))
    if generation is not None and observed != generation:
        fields.append(
            (
                "Generation",
                f"{generation}, observed {observed if observed is not None else NONE} (not reconciled yet)",
            )
        )
    width = max(len(k) for k, _ in fields) + 2
    lines = [f"{k + ':':<{width}}{v}" for k, v in fields]

    lines += ["", "Gates:", gates_table(status), "", "Conditions:"]
    conditions = status.get("conditions") or []
    if conditions:
        rows = [
            [
                c.get("type"),
                c.get("status"),
                c.get("reason"),
                age(c.get("lastTransitionTime"), now),
                c.get("message"),
            ]
            for c in conditions
        ]
        lines.append(_indent(table(["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], rows)))
    else:
        lines.append("  (none)")
    lines += ["", "Events:", _indent(events_table(events, now)) if events else "  (none)"]
    return "\n".join(lines) + "\n"


def _pending_command(meta: Mapping[str, Any], rollout: Mapping[str, Any]) -> str | None:
    """The command in the annotations when the operator has not recorded it as handled."""
    annotations = meta.get("annotations") or {}
    command = (annotations.get(COMMAND_ANNOTATION) or "").strip()
    if not command:
        return None
    key = f"{command}#{(annotations.get(COMMAND_ID_ANNOTATION) or '').strip()}"
    return None if key == rollout.get("lastCommand") else key


def _event_time(event: Mapping[str, Any]) -> str:
    series = event.get("series") or {}
    return (
        series.get("lastObservedTime")
        or event.get("lastTimestamp")
        or event.get("eventTime")
        or event.get("firstTimestamp")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def events_table(events: Sequence[Mapping[str, Any]], now: datetime, limit: int = MAX_EVENTS) -> str:
    """The last ``limit`` events, oldest first (as ``kubectl describe`` shows them)."""
    ordered = sorted(events, key=lambda e: parse_time(_event_time(e)) or datetime.min.replace(tzinfo=UTC))
    rows = []
    for e in ordered[-limit:]:
        count = e.get("count") or (e.get("series") or {}).get("count") or 1
        reason = e.get("reason") or NONE
        rows.append(
            [
                age(_event_time(e), now),
                e.get("type"),
                reason + (f" (x{count})" if count > 1 else ""),
                e.get("message") or e.get("note"),
            ]
        )
    return table(["AGE", "TYPE", "REASON", "MESSAGE"], rows)


# --------------------------------------------------------------------- list


def format_list(stacks: Sequence[Mapping[str, Any]], now: datetime, all_namespaces: bool = False) -> str:
    """``kubectl istack list``: ``kubectl get istack`` plus a readable gate summary."""
    if not stacks:
        return "No InferenceStacks found.\n"
    headers = ["NAME", "PHASE", "STABLE", "CANDIDATE", "STEP", "WEIGHT", "SHADOW", "GATES", "AGE"]
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
    rows = []
    for s in sorted(
        stacks,
        key=lambda s: (
            (s.get("metadata") or {}).get("namespace", ""),
            (s.get("metadata") or {}).get("name", ""),
        ),
    ):
        meta, status = s.get("metadata") or {}, s.get("status") or {}
        traffic = status.get("traffic") or {}
        row = [
            meta.get("name"),
            status.get("phase"),
            status.get("stableRevision"),
            status.get("candidateRevision"),
            (status.get("rollout") or {}).get("step"),
            f"{traffic.get('candidateWeight', 0)}%",
            f"{traffic.get('shadowPercent', 0)}%",
            gate_summary(status),
            age(meta.get("creationTimestamp"), now),
        ]
        if all_namespaces:
            row.insert(0, meta.get("namespace"))
        rows.append(row)
    return table(headers, rows) + "\n"


# ------------------------------------------------------------------ history


def _revision_parts(cr: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    data = cr.get("data") or {}
    return str(data.get("hash") or ""), data.get("revision") or {}


def _model_cell(parts: Mapping[str, Any]) -> str:
    model = parts.get("model") or {}
    if model.get("endpoint"):
        return f"{model.get('name', '?')} (hosted)"
    rev = model.get("revision")
    return f"{model.get('name', '?')}@{rev[:8] if rev else 'unpinned'}"


def revision_roles(status: Mapping[str, Any]) -> dict[str, str]:
    roles: dict[str, str] = {}
    for rev in (status.get("rollout") or {}).get("scaleDownAt") or {}:
        roles[rev] = "warm"
    if rb := status.get("rolledBackRevision"):
        roles[rb] = "rolled-back"
    if c := status.get("candidateRevision"):
        roles[c] = "candidate"
    if s := status.get("stableRevision"):
        roles[s] = "stable"
    return roles


def format_history(stack: Mapping[str, Any], revisions: Sequence[Mapping[str, Any]], now: datetime) -> str:
    """``kubectl istack history NAME``: the stack's ControllerRevisions, newest first."""
    if not revisions:
        return "No revisions recorded yet.\n"
    roles = revision_roles(stack.get("status") or {})
    rows = []
    for cr in sorted(revisions, key=lambda r: int(r.get("revision") or 0), reverse=True):
        rev, parts = _revision_parts(cr)
        retriever = parts.get("retriever") or {}
        index = retriever.get("index") or {}
        tools = parts.get("tools") or {}
        rows.append(
            [
                cr.get("revision"),
                rev,
                age((cr.get("metadata") or {}).get("creationTimestamp"), now),
                (parts.get("prompt") or {}).get("version"),
                _model_cell(parts),
                f"{index.get('name')}:{index.get('version')}" if index else NONE,
                tools.get("version"),
                roles.get(rev, ""),
            ]
        )
    return table(["REVISION", "HASH", "AGE", "PROMPT", "MODEL", "INDEX", "TOOLS", "ROLE"], rows) + "\n"


def resolve_revision(ref: str, revisions: Sequence[Mapping[str, Any]]) -> str:
    """The revision hash ``ref`` names: a hash, a unique hash prefix (4+ chars) or a revision number."""
    ref = ref.strip()
    hashes = {h: int(cr.get("revision") or 0) for cr in revisions if (h := _revision_parts(cr)[0])}
    if ref in hashes:
        return ref
    if ref.isdigit():
        by_number = [h for h, n in hashes.items() if n == int(ref)]
        if by_number:
            return by_number[0]
    matches = [h for h in hashes if len(ref) >= 4 and h.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(f"{n}={h}" for h, n in sorted(hashes.items(), key=lambda kv: -kv[1])) or "none"
    if len(matches) > 1:
        raise CliError(f"revision {ref!r} is ambiguous ({', '.join(sorted(matches))}); give more characters")
    raise CliError(
        f"no revision {ref!r} in the stack's history (known: {known}); see `kubectl istack history`"
    )


# ----------------------------------------------------------------- commands


def command_value(verb: Verb, argument: str = "") -> str:
    return f"{verb.value}:{argument}" if verb == Verb.UNDO else verb.value


def command_id(now: datetime) -> str:
    """A UTC timestamp with microseconds: a new id makes the operator run the command again."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def command_patch(verb: Verb, now: datetime, argument: str = "") -> dict[str, Any]:
    """The merge patch that issues one command: both annotations in one write."""
    return {
        "metadata": {
            "annotations": {
                COMMAND_ANNOTATION: command_value(verb, argument),
                COMMAND_ID_ANNOTATION: command_id(now),
            }
        }
    }


def command_warning(verb: Verb, status: Mapping[str, Any]) -> str | None:
    """Why the operator will likely ignore this command, judged from the status; None if it looks fine."""
    candidate, paused = status.get("candidateRevision"), (status.get("rollout") or {}).get("paused")
    if verb in (Verb.PROMOTE, Verb.PROMOTE_FULL, Verb.ABORT) and not candidate:
        return f"no candidate revision is rolling out; {verb.value} will do nothing"
    if verb == Verb.RETRY and not status.get("rolledBackRevision"):
        return "no rolled-back revision to retry"
    if verb == Verb.RESUME and not paused:
        return "the rollout is not paused"
    if verb == Verb.PAUSE and paused:
        return "the rollout is already paused"
    return None
