"""kubectl istack: the pure formatting and command functions, with realistic objects (no cluster)."""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime, timedelta

import pytest

from inferstack.cli import format as fmt
from inferstack.cli import istack
from inferstack.core.apikeys import API_KEY_LABEL, key_digest, parse_key_secret
from inferstack.core.rollout import COMMAND_ANNOTATION, COMMAND_ID_ANNOTATION, Verb, parse_command

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def ts(delta: timedelta) -> str:
    return (NOW - delta).strftime("%Y-%m-%dT%H:%M:%SZ")


STEPS = [
    {"shadow": {"percent": 10, "duration": "5m", "minSamples": 100}},
    {"canary": {"weight": 1, "duration": "5m"}},
    {"canary": {"weight": 5, "duration": "5m"}},
    {"canary": {"weight": 25, "duration": "5m"}},
    {"ramp": {"increment": 25, "duration": "5m"}},
]

# A stack at canary 5 % with one failing slice, as the operator writes it.
PROGRESSING = {
    "apiVersion": "inferstack.dev/v1alpha1",
    "kind": "InferenceStack",
    "metadata": {
        "name": "support-bot",
        "namespace": "team-a",
        "generation": 4,
        "creationTimestamp": ts(timedelta(days=3)),
        "annotations": {COMMAND_ANNOTATION: "pause", COMMAND_ID_ANNOTATION: "2025-06-01T11:50:00.000000Z"},
    },
    "spec": {"rollout": {"steps": STEPS}},
    "status": {
        "observedGeneration": 4,
        "phase": "Progressing",
        "stableRevision": "db5b6442e0",
        "candidateRevision": "7c1f0a9e22",
        "rolledBackRevision": None,
        "cacheNamespace": "team-a.support-bot:db5b6442e0",
        "message": "holding: gate answer-quality, slice billing failed 1 of 2 analyses",
        "traffic": {"stableWeight": 95, "candidateWeight": 5, "shadowPercent": 0},
        "rollout": {
            "stepIndex": 2,
            "step": "canary 5%",
            "stepStartedAt": ts(timedelta(minutes=3)),
            "candidateSince": ts(timedelta(minutes=14)),
            "lastAnalysisAt": ts(timedelta(seconds=20)),
            "failures": {"answer-quality/billing": 1},
            "paused": False,
            "rollbackReason": "",
            "scaleDownAt": {},
            "lastCommand": "pause#2025-06-01T11:50:00.000000Z",
        },
        "gates": [
            {"gate": "answer-quality", "slice": "billing", "verdict": "Fail", "value": 0.712345, "baseline": 0.91,
             "threshold": ">= 0.819 (stable -10%)", "samples": 412.0, "message": "0.7123 is below 0.819"},
            {"gate": "answer-quality", "slice": "", "verdict": "Pass", "value": 0.9, "baseline": 0.91,
             "threshold": ">= 0.819 (stable -10%)", "samples": 5000.0, "message": "ok"},
            {"gate": "p95-latency", "slice": "", "verdict": "Inconclusive", "value": None, "baseline": 1.8,
             "threshold": "<= 2.16 (stable +20%)", "samples": 12.0, "message": "12 of 100 samples"},
        ],
        "gateSummary": "Fail=1 Inconclusive=1 Pass=1",
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "Progressing", "message": "canary 5%",
             "lastTransitionTime": ts(timedelta(minutes=14))},
            {"type": "Reconciling", "status": "True", "reason": "Progressing", "message": "canary 5%",
             "lastTransitionTime": ts(timedelta(minutes=14))},
            {"type": "Stalled", "status": "False", "reason": "NotStalled", "message": "",
             "lastTransitionTime": ts(timedelta(days=3))},
        ],
    },
}  # fmt: skip

HEALTHY = {
    "metadata": {
        "name": "chat-assistant",
        "namespace": "default",
        "generation": 1,
        "creationTimestamp": ts(timedelta(hours=5)),
    },
    "spec": {},
    "status": {
        "observedGeneration": 1,
        "phase": "Healthy",
        "stableRevision": "a968cc55a5",
        "traffic": {"stableWeight": 100, "candidateWeight": 0, "shadowPercent": 0},
        "rollout": {},
        "gates": [],
        "conditions": [],
    },
}

EVENTS = [
    {"type": "Normal", "reason": "StepStarted", "message": "revision 7c1f0a9e22: step 3/5, canary 5%",
     "lastTimestamp": ts(timedelta(minutes=3)), "count": 1},
    {"type": "Normal", "reason": "RolloutStarted", "message": "rolling out revision 7c1f0a9e22 (stable db5b6442e0)",
     "lastTimestamp": ts(timedelta(minutes=14)), "count": 1},
    {"type": "Warning", "reason": "GateFailed", "message": "gate answer-quality, slice billing failed",
     "eventTime": ts(timedelta(seconds=20)), "series": {"count": 3, "lastObservedTime": ts(timedelta(seconds=20))}},
]  # fmt: skip


def controller_revision(
    number: int, hash_: str, prompt: str, model_rev: str | None, age: timedelta, index: str | None = "2025-05"
) -> dict:
    parts = {
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct", "revision": model_rev, "endpoint": None},
        "prompt": {"version": prompt, "system": "You are helpful."},
        "retriever": {
            "embedding": {"model": "bge-m3"},
            "index": {"name": "support-articles", "version": index},
        }
        if index
        else None,
        "tools": {"version": "v3", "definitions": []},
    }
    return {
        "metadata": {"name": f"support-bot-{hash_}", "creationTimestamp": ts(age)},
        "revision": number,
        "data": {"hash": hash_, "revision": parts},
    }


REVISIONS = [
    controller_revision(1, "0b9d3a11f4", "v10", "945c8663" + "0" * 32, timedelta(days=3)),
    controller_revision(2, "3fb12e81b8", "v11", "945c8663" + "0" * 32, timedelta(days=2)),
    controller_revision(3, "db5b6442e0", "v12", "945c8663" + "0" * 32, timedelta(days=1)),
    controller_revision(4, "7c1f0a9e22", "v13", None, timedelta(minutes=14), index="2025-06"),
]


# -------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (timedelta(seconds=5), "5s"),
        (timedelta(seconds=119), "119s"),
        (timedelta(minutes=3, seconds=7), "3m7s"),
        (timedelta(minutes=42), "42m"),
        (timedelta(hours=5, minutes=30), "5h30m"),
        (timedelta(hours=20), "20h"),
        (timedelta(days=3), "3d"),
        (timedelta(seconds=-30), "0s"),  # clock skew: never negative
    ],
)
def test_age(delta, expected):
    assert fmt.age(ts(delta), NOW) == expected


def test_age_without_a_time():
    assert fmt.age(None, NOW) == "-"
    assert fmt.age("not a time", NOW) == "-"


@pytest.mark.parametrize(
    ("value", "expected"), [(None, "-"), (412.0, "412"), (0.712345, "0.7123"), (1e-5, "1e-05"), (3, "3")]
)
def test_number(value, expected):
    assert fmt.number(value) == expected


def test_table_aligns_columns_and_cuts_long_cells():
    text = fmt.table(["A", "LONGER", "LAST"], [["x" * 70, "y", "z" * 200], ["1", None, ""]])
    header, first, second = text.splitlines()
    assert header.index("LONGER") == first.index("y") == second.index("-")
    assert first.split()[0].endswith("...") and len(first.split()[0]) == fmt.MAX_CELL
    assert len(first.split()[-1]) == fmt.MAX_LAST_CELL
    assert second.endswith("-")  # empty cells print a dash, no trailing spaces


# ---------------------------------------------------------------------- status


def fields(text: str) -> dict[str, str]:
    """The "Key:   value" block at the top of ``status``."""
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.split("\n\n")[0].splitlines())}


def test_status_shows_revisions_step_traffic_and_timing():
    text = fmt.format_status(PROGRESSING, EVENTS, NOW)
    lines = fields(text)
    block = text.split("\n\n")[0].splitlines()
    value_columns = {len(line) - len(line.partition(":")[2].lstrip()) for line in block}
    assert len(value_columns) == 1  # the values start in one column
    assert lines["Phase"] == "Progressing"
    assert lines["Stable"] == "db5b6442e0"
    assert lines["Candidate"] == "7c1f0a9e22  (for 14m)"
    assert lines["Step"] == "3/5 canary 5%  (started 3m0s ago)"
    assert lines["Traffic"] == "stable 95%, candidate 5%, shadow 0% of requests"
    assert lines["Last analysis"] == "20s ago"
    assert lines["Message"].startswith("holding: gate answer-quality")
    assert "Pending command" not in lines  # lastCommand matches the annotations: handled
    assert "Generation" not in lines


def test_status_gate_table_has_value_baseline_threshold_samples_and_failures_per_slice():
    text = fmt.format_status(PROGRESSING, EVENTS, NOW)
    gates = text.split("Gates:\n")[1].split("\n\n")[0].splitlines()
    assert gates[0].split() == [
        "GATE",
        "SLICE",
        "VERDICT",
        "VALUE",
        "BASELINE",
        "DIFFERENCE",
        "THRESHOLD",
        "SAMPLES",
        "FAILURES",
        "MESSAGE",
    ]
    billing = next(line for line in gates if "billing" in line)
    assert billing.split()[:5] == ["answer-quality", "billing", "Fail", "0.7123", "0.91"]
    assert (
        ">= 0.819 (stable -10%)" in billing
        and " 412 " in billing
        and billing.endswith("0.7123 is below 0.819")
    )
    assert billing.split()[-5] == "1"  # one consecutive failing analysis
    aggregate = next(line for line in gates if "(all)" in line)
    assert aggregate.split()[:3] == ["answer-quality", "(all)", "Pass"]
    latency = next(line for line in gates if "p95-latency" in line)
    assert latency.split()[2:5] == ["Inconclusive", "-", "1.8"]


def test_status_conditions_and_events_oldest_first():
    text = fmt.format_status(PROGRESSING, EVENTS, NOW)
    conditions = text.split("Conditions:\n")[1].split("\n\n")[0]
    assert "Reconciling   True     Progressing   14m" in conditions
    events = text.split("Events:\n")[1].strip().splitlines()
    assert [e.split()[2] for e in events[1:]] == ["RolloutStarted", "StepStarted", "GateFailed"]
    assert "GateFailed (x3)" in events[-1]


def test_status_flags_an_unhandled_command_and_an_unobserved_generation():
    stack = copy.deepcopy(PROGRESSING)
    stack["metadata"]["annotations"] = {COMMAND_ANNOTATION: "abort", COMMAND_ID_ANNOTATION: "t2"}
    stack["metadata"]["generation"] = 5
    lines = fields(fmt.format_status(stack, [], NOW))
    assert lines["Pending command"] == "abort#t2 (not handled yet: is the operator running?)"
    assert lines["Generation"] == "5, observed 4 (not reconciled yet)"


def test_status_of_a_rolled_back_paused_stack():
    stack = copy.deepcopy(PROGRESSING)
    stack["status"].update(
        phase="Degraded", candidateRevision=None, rolledBackRevision="7c1f0a9e22", gates=[]
    )
    stack["status"]["rollout"].update(
        paused=True,
        rollbackReason="gate answer-quality, slice billing failed 2 consecutive analyses",
        scaleDownAt={"7c1f0a9e22": "2025-06-01T12:10:00Z"},
    )
    text = fmt.format_status(stack, [], NOW)
    lines = fields(text)
    assert lines["Candidate"] == "-"
    assert lines["Step"] == "-  [paused]"
    assert (
        lines["Rolled back"] == "7c1f0a9e22: gate answer-quality, slice billing failed 2 consecutive analyses"
    )
    assert lines["Kept warm"] == "7c1f0a9e22 until 2025-06-01T12:10:00Z"
    assert "(no analysis yet)" in text and "Events:\n  (none)" in text


def test_status_of_a_stack_never_reconciled():
    text = fmt.format_status(
        {"metadata": {"name": "new", "namespace": "default", "generation": 1}, "spec": {}}, [], NOW
    )
    assert "Phase:" in text and "(not reconciled yet)" in text
    assert "Generation:" in text and "observed -" in text


def test_waiting_for_pods_step():
    stack = copy.deepcopy(PROGRESSING)
    stack["status"]["rollout"].update(stepIndex=None, step="waiting for pods", stepStartedAt=None)
    assert fields(fmt.format_status(stack, [], NOW))["Step"] == "waiting for pods"


# ------------------------------------------------------------------------ list


def test_gate_summary_names_what_does_not_pass():
    assert (
        fmt.gate_summary(PROGRESSING["status"])
        == "1/3 pass; fail: answer-quality/billing; inconclusive: p95-latency"
    )
    assert fmt.gate_summary(HEALTHY["status"]) == "-"


def test_list_sorted_with_gate_summary_and_namespace_column():
    text = fmt.format_list([PROGRESSING, HEALTHY], NOW, all_namespaces=True)
    header, first, second = text.splitlines()
    assert header.split() == [
        "NAMESPACE",
        "NAME",
        "PHASE",
        "STABLE",
        "CANDIDATE",
        "STEP",
        "WEIGHT",
        "SHADOW",
        "GATES",
        "AGE",
    ]
    assert first.split()[:5] == ["default", "chat-assistant", "Healthy", "a968cc55a5", "-"]
    assert first.split()[-1] == "5h0m"
    assert second.split()[:6] == [
        "team-a",
        "support-bot",
        "Progressing",
        "db5b6442e0",
        "7c1f0a9e22",
        "canary",
    ]
    assert "5%" in second and "1/3 pass; fail: answer-quality/billing" in second and second.endswith("3d")
    assert "NAMESPACE" not in fmt.format_list([HEALTHY], NOW)
    assert fmt.format_list([], NOW) == "No InferenceStacks found.\n"


# --------------------------------------------------------------------- history


def test_history_newest_first_with_roles():
    stack = copy.deepcopy(PROGRESSING)
    stack["status"]["rolledBackRevision"] = "3fb12e81b8"
    rows = [line.split() for line in fmt.format_history(stack, REVISIONS, NOW).splitlines()]
    assert rows[0] == ["REVISION", "HASH", "AGE", "PROMPT", "MODEL", "INDEX", "TOOLS", "ROLE"]
    assert [r[0] for r in rows[1:]] == ["4", "3", "2", "1"]
    assert rows[1] == [
        "4",
        "7c1f0a9e22",
        "14m",
        "v13",
        "meta-llama/Llama-3.1-8B-Instruct@unpinned",
        "support-articles:2025-06",
        "v3",
        "candidate",
    ]
    assert rows[2][-1] == "stable" and rows[2][4].endswith("@945c8663")
    assert rows[3][-1] == "rolled-back"
    assert rows[4][-1] == "-"  # neither stable, candidate, rolled back nor warm


def test_history_of_a_hosted_model_without_retriever():
    cr = controller_revision(1, "aaaa000011", "v1", None, timedelta(minutes=1), index=None)
    cr["data"]["revision"]["model"]["endpoint"] = {"url": "https://api.example.com"}
    row = fmt.format_history(HEALTHY, [cr], NOW).splitlines()[1].split()
    assert row[4:7] == ["meta-llama/Llama-3.1-8B-Instruct", "(hosted)", "-"]
    assert fmt.format_history(HEALTHY, [], NOW) == "No revisions recorded yet.\n"


@pytest.mark.parametrize(
    ("ref", "expected"), [("3fb12e81b8", "3fb12e81b8"), ("2", "3fb12e81b8"), ("db5b", "db5b6442e0")]
)
def test_resolve_revision(ref, expected):
    assert fmt.resolve_revision(ref, REVISIONS) == expected


@pytest.mark.parametrize(
    ("ref", "error"), [("9", "no revision '9'"), ("ffff", "no revision"), ("db5", "no revision")]
)
def test_resolve_revision_refuses_unknown(ref, error):
    with pytest.raises(fmt.CliError, match=error):
        fmt.resolve_revision(ref, REVISIONS)


def test_resolve_revision_refuses_an_ambiguous_prefix():
    revisions = [*REVISIONS, controller_revision(5, "db5b0000aa", "v14", None, timedelta(minutes=1))]
    with pytest.raises(fmt.CliError, match="ambiguous"):
        fmt.resolve_revision("db5b", revisions)


# -------------------------------------------------------------------- commands


@pytest.mark.parametrize(
    ("verb", "argument", "value"),
    [(Verb.PROMOTE, "", "promote"), (Verb.PROMOTE_FULL, "", "promote-full"), (Verb.ABORT, "", "abort"),
     (Verb.RETRY, "", "retry"), (Verb.PAUSE, "", "pause"), (Verb.RESUME, "", "resume"),
     (Verb.UNDO, "3fb12e81b8", "undo:3fb12e81b8")],
)  # fmt: skip
def test_command_patch_is_understood_by_the_operator(verb, argument, value):
    patch = fmt.command_patch(verb, NOW, argument)
    assert list(patch) == ["metadata"] and list(patch["metadata"]) == ["annotations"]
    annotations = patch["metadata"]["annotations"]
    assert annotations == {COMMAND_ANNOTATION: value, COMMAND_ID_ANNOTATION: "2025-06-01T12:00:00.000000Z"}
    command = parse_command(annotations)
    assert command is not None and command.verb == verb and command.argument == argument and not command.error


def test_a_repeated_command_gets_a_new_id():
    first = fmt.command_patch(Verb.PROMOTE, NOW)["metadata"]["annotations"]
    again = fmt.command_patch(Verb.PROMOTE, NOW + timedelta(microseconds=1))["metadata"]["annotations"]
    assert parse_command(first).key != parse_command(again).key


@pytest.mark.parametrize(
    ("verb", "status", "warned"),
    [
        (Verb.PROMOTE, HEALTHY["status"], True),
        (Verb.PROMOTE, PROGRESSING["status"], False),
        (Verb.ABORT, HEALTHY["status"], True),
        (Verb.RETRY, HEALTHY["status"], True),
        (Verb.RETRY, {"rolledBackRevision": "x"}, False),
        (Verb.RESUME, PROGRESSING["status"], True),
        (Verb.PAUSE, PROGRESSING["status"], False),
        (Verb.PAUSE, {"rollout": {"paused": True}}, True),
    ],
)
def test_command_warning(verb, status, warned):
    assert (fmt.command_warning(verb, status) is not None) == warned


# -------------------------------------------------------------- command line


class FakeClient:
    """Stands in for istack.Client: records the patches."""

    namespace = "team-a"

    def __init__(self) -> None:
        self.patches: list[tuple[str, str, dict]] = []

    def get_stack(self, namespace, name):
        return copy.deepcopy(PROGRESSING)

    def events(self, namespace, name):
        return EVENTS

    def revisions(self, namespace, name):
        return REVISIONS

    def list_stacks(self, namespace):
        return [PROGRESSING, HEALTHY]

    def patch_stack(self, namespace, name, patch):
        self.patches.append((namespace, name, patch))
        return {}


@pytest.mark.parametrize(
    ("argv", "value"),
    [
        (["promote", "support-bot"], "promote"),
        (["promote", "support-bot", "--full"], "promote-full"),
        (["abort", "support-bot"], "abort"),
        (["retry", "support-bot"], "retry"),
        (["pause", "support-bot"], "pause"),
        (["resume", "support-bot"], "resume"),
        (["undo", "support-bot", "--to", "2"], "undo:3fb12e81b8"),
        (["-n", "team-a", "undo", "support-bot", "--to", "db5b"], "undo:db5b6442e0"),
    ],
)
def test_commands_send_one_merge_patch(argv, value):
    client = FakeClient()
    args = istack.parser().parse_args(argv)
    args.namespace = args.namespace or client.namespace
    out = args.fn(client, args, NOW)
    [(namespace, name, patch)] = client.patches
    assert (namespace, name) == ("team-a", "support-bot")
    assert patch["metadata"]["annotations"][COMMAND_ANNOTATION] == value
    assert f"{value} sent" in out


def test_namespace_flag_before_or_after_the_subcommand():
    p = istack.parser()
    assert p.parse_args(["-n", "a", "status", "x"]).namespace == "a"
    assert p.parse_args(["status", "x", "--namespace", "b"]).namespace == "b"
    assert p.parse_args(["--context", "prod", "list", "-A"]).context == "prod"
    assert p.parse_args(["status", "x"]).namespace is None  # then the context's namespace


def test_undo_needs_a_target():
    with pytest.raises(SystemExit):
        istack.parser().parse_args(["undo", "support-bot"])


def test_read_commands_render_through_the_formatters():
    client = FakeClient()
    for argv, needle in [
        (["status", "support-bot"], "Gates:"),
        (["list", "-A"], "NAMESPACE"),
        (["history", "support-bot"], "REVISION"),
    ]:
        args = istack.parser().parse_args(argv)
        args.namespace = args.namespace or client.namespace
        args.all_namespaces = getattr(args, "all_namespaces", False)
        assert needle in args.fn(client, args, NOW)
    assert client.patches == []


def test_api_errors_read_as_one_line():
    class E:
        status, reason = 404, "Not Found"

    args = istack.parser().parse_args(["status", "nope", "-n", "x"])
    assert "not found in namespace 'x'" in istack.api_error(E(), args)
    E.status, E.reason = 403, "Forbidden"
    assert "forbidden" in istack.api_error(E(), args)


class KeyClient(FakeClient):
    def __init__(self) -> None:
        super().__init__()
        self.secrets: list[tuple[str, dict]] = []

    def create_secret(self, namespace, body):
        self.secrets.append((namespace, body))


def test_key_create_stores_only_the_hash_and_prints_the_key_once(capsys):
    client = KeyClient()
    args = istack.parser().parse_args(["key", "create", "ci-bot", "--tenant", "acme", "--stacks", "support,shop", "-n", "team-a"])
    out = args.fn(client, args, NOW)
    key = out.strip()
    assert out == key + "\n" and key.startswith("isk_") and len(key) == 47  # stdout is the key alone, once
    [(namespace, secret)] = client.secrets
    assert namespace == "team-a" and secret["metadata"] == {"name": "ci-bot", "namespace": "team-a", "labels": {API_KEY_LABEL: "true"}}
    assert secret["stringData"] == {"sha256": key_digest(key).hex(), "tenant": "acme", "stacks": "support,shop"}
    assert key not in repr(secret)
    digest, grant = parse_key_secret("team-a", {k: base64.b64encode(v.encode()).decode() for k, v in secret["stringData"].items()})
    assert digest == key_digest(key) and grant.stacks == {"support", "shop"}  # what the router will read
    err = capsys.readouterr().err
    assert "printed once" in err and key not in err
    args = istack.parser().parse_args(["key", "create", "other", "--tenant", "acme"])
    args.namespace = "team-a"
    assert args.fn(client, args, NOW) != out and client.secrets[-1][1]["stringData"]["stacks"] == "*"


def test_key_create_refuses_a_bad_tenant_before_making_anything():
    client = KeyClient()
    args = istack.parser().parse_args(["key", "create", "k", "--tenant", "Acme Corp", "-n", "team-a"])
    with pytest.raises(fmt.CliError, match="DNS label"):
        args.fn(client, args, NOW)
    assert client.secrets == []


def test_key_create_api_errors():
    class E:
        status, reason = 409, "Conflict"

    args = istack.parser().parse_args(["key", "create", "ci-bot", "--tenant", "acme", "-n", "team-a"])
    assert "already exists" in istack.api_error(E(), args)
    E.status = 403
    assert "create` on secrets" in istack.api_error(E(), args)


def test_an_evaluator_gate_shows_both_arms_and_the_interval_on_the_difference():
    status = {
        "gates": [
            {"gate": "quality", "slice": "billing", "verdict": "Fail", "value": 0.82, "baseline": 0.9, "threshold": "\u0394 > -0.05",
             "samples": 120.4, "baselineSamples": 340.0, "delta": -0.08, "deltaLower": -0.13, "deltaUpper": -0.03,
             "message": "billing  \u0394 \u22120.08 [\u22120.13, \u22120.03]  FAIL"},
        ],
        "rollout": {"failures": {"quality/billing": 1}},
    }  # fmt: skip
    row = fmt.gates_table(status).splitlines()[1]
    assert "-0.080 [-0.130, -0.030]" in row and " 120/340 " in row and "Fail" in row
    assert "Evaluated by" not in fmt.gates_table(status)  # nothing to name


def test_the_gates_table_names_what_judged_each_gate_once() -> None:
    judge = "Pairwise judge, model judge-1, prompt inferstack-judge-v2 sha256:0123456789ab"
    status = {"gates": [
        {"gate": "quality", "slice": "billing", "verdict": "Pass", "evaluatedBy": judge},
        {"gate": "quality", "verdict": "Pass", "evaluatedBy": judge},
        {"gate": "golden", "verdict": "Pass", "evaluatedBy": "golden set golden, cases sha256:abcdef012345"},
        {"gate": "p99", "verdict": "Pass"},
    ]}  # fmt: skip
    text = fmt.gates_table(status)
    tail = text.split("Evaluated by:")[1].splitlines()
    assert [line.strip() for line in tail if line.strip()] == [f"quality: {judge}", "golden: golden set golden, cases sha256:abcdef012345"]
