"""Golden sets on the real control plane: a Job replays the cases before the candidate gets any traffic.

The stack's first rollout step is ``evaluate``: the operator creates one Job
per golden set; the harness's job runner (e2e/jobrunner.py) runs its pod's
command locally (kwok runs no containers) against the stand-in model server,
with the revisions' bundles exactly as the router would send them, and writes
the pod's status and termination message through the API server. The
operator reads the report from the pod, like on a real cluster.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest
import yaml
from conftest import NS_GLOB, PREFIX, kget, kubectl, scrape, wait_until

from dataplane import DataPlane, PlanRecorder
from inferstack.standin.fixtures import FIXTURES
from jobrunner import NODE_SELECTOR, JobRunner
from scenario import BAD_PROMPT, BETTER_PROMPT, GOOD_PROMPT, support_stack

COPIES = 4  # cases per fixture: 12 per slice, enough for a Pass per slice with a margin of 0.5
CRITICAL = "refund-window"


def cases() -> str:
    out = []
    for f in FIXTURES:
        for copy in range(COPIES):
            case_id = CRITICAL if (f.question == "How do I get a refund?" and copy == 0) else f"{f.slice}-{FIXTURES.index(f)}-{copy}"
            # The stand-in's right answer, in part: a refusal or another answer fails the case.
            out.append({"id": case_id, "slice": f.slice, "messages": [{"role": "user", "content": f.question}],
                        "expected": f.answer[:24], "critical": case_id == CRITICAL})  # fmt: skip
    return "\n".join(json.dumps(c) for c in out) + "\n"


GATE = {"name": "golden-regression", "evaluator": "golden", "margin": 0.5, "minSamples": 3}


def stack(system: str) -> dict:
    manifest = support_stack("shop", system, gates=[GATE])
    manifest["spec"]["rollout"]["steps"].insert(0, {"evaluate": {"timeout": "2m"}})
    manifest["spec"]["evaluation"] = {
        "slices": {"values": ["billing", "shipping", "general"]},
        "evaluators": [{"name": "golden", "goldenSet": {"configMapRefs": [{"name": "golden-cases", "key": "cases.jsonl"}]}}],
    }
    return manifest


class GoldenDataPlane(DataPlane):
    """The shared data plane, with golden Jobs' pods placed where only the job runner picks them up."""

    def operator_config(self):
        path = super().operator_config()
        config = yaml.safe_load(path.read_text())
        config["goldenJob"] = {"nodeSelector": NODE_SELECTOR, "requestTimeoutSeconds": 10}
        path.write_text(yaml.safe_dump(config))
        return path


@pytest.fixture(scope="module")
def plane(tmp_path_factory) -> Iterator[GoldenDataPlane]:
    dp = GoldenDataPlane(tmp_path_factory.mktemp("golden"), namespace=NS_GLOB)
    dp.start()
    yield dp
    dp.stop()


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Iterator[JobRunner]:
    with JobRunner(tmp_path_factory.mktemp("jobrunner"), prefix=f"{PREFIX}-") as r:
        yield r
    assert not r.errors, r.errors


def apply(namespace: str, manifest: dict) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def status(namespace: str) -> dict:
    return (kget("istack", "shop", namespace) or {}).get("status", {})


def jobs(namespace: str) -> list[dict]:
    return (kget("jobs", None, namespace) or {}).get("items", [])


def deploy(namespace: str, system: str) -> str:
    kubectl("create", "configmap", "golden-cases", "-n", namespace, "--from-file=cases.jsonl=/dev/stdin", input=cases())
    apply(namespace, stack(system))
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "istack/shop", "--timeout=150s")
    assert not jobs(namespace), "a first deploy has nothing to compare: no golden Job"
    return status(namespace)["stableRevision"]


def runs_in(runner: JobRunner, namespace: str) -> dict[str, int]:
    return {k: v for k, v in runner.runs.items() if k.startswith(f"{namespace}/")}


def test_a_failed_critical_case_blocks_the_candidate_before_shadow(plane, runner, namespace):
    stable = deploy(namespace, GOOD_PROMPT)
    with PlanRecorder(namespace, "shop") as plans:
        apply(namespace, stack(BAD_PROMPT))  # refuses billing: the refund case fails on the candidate
        cand = wait_until("candidate", lambda: status(namespace).get("candidateRevision"))
        st = wait_until("rollback", lambda: (s := status(namespace)).get("phase") == "Degraded" and s, timeout=90)
    assert st["stableRevision"] == stable and st["rolledBackRevision"] == cand
    reason = st["rollout"]["rollbackReason"]
    assert CRITICAL in reason and "critical case failed on the candidate" in reason, reason
    assert [g["verdict"] for g in st["gates"]] == ["Fail"] and CRITICAL in st["gates"][0]["message"]
    # the traffic plan never gave the candidate a user or a shadow copy
    assert plans.plans and all(weight == 0 and shadow == 0 for _, _, _, weight, shadow in plans.plans), plans.plans
    # one Job, its pod run once; the operator deletes it when the rollout has ended
    assert list(runs_in(runner, namespace).values()) == [1]
    wait_until("golden Job deleted after the rollback", lambda: not jobs(namespace), timeout=30)


def test_a_passing_golden_set_lets_the_rollout_proceed_to_shadow(plane, runner, namespace):
    deploy(namespace, GOOD_PROMPT)
    seen: list[dict] = []
    with PlanRecorder(namespace, "shop") as plans:
        apply(namespace, stack(BETTER_PROMPT))
        cand = wait_until("candidate", lambda: status(namespace).get("candidateRevision"))

        def shadowing() -> bool:
            s = status(namespace)
            seen.extend(s.get("gates") or [])
            assert s.get("phase") != "Degraded", s.get("message")
            return any(c == cand and shadow > 0 for _, _, c, _, shadow in plans.plans)

        wait_until("shadow step", shadowing, timeout=90)
    golden = [g for g in seen if g["gate"] == "golden-regression"]
    assert {g["slice"] for g in golden} == {"billing", "shipping", "general", ""}
    assert all(g["verdict"] == "Pass" and g["value"] == 1 and g["baseline"] == 1 for g in golden), golden
    assert {g["samples"] for g in golden if g["slice"]} == {3 * COPIES} and {g["samples"] for g in golden if not g["slice"]} == {9 * COPIES}
    # the first plan that names the candidate is the shadow step: nothing before the verdict
    first = next(p for p in plans.plans if p[2] == cand)
    assert first[3:] == (0, 50), plans.plans
    assert list(runs_in(runner, namespace).values()) == [1]


def test_an_operator_killed_while_the_job_runs_resumes_without_a_second_job_or_run(plane, runner, namespace):
    deploy(namespace, GOOD_PROMPT)
    operator = plane.procs["operator"]
    uids: set[str] = set()

    def job_uids() -> set[str]:
        uids.update(j["metadata"]["uid"] for j in jobs(namespace))
        return uids

    runner.hold()  # the Job stays active: its pod waits
    try:
        apply(namespace, stack(BETTER_PROMPT))
        wait_until("golden Job and its waiting pod", lambda: job_uids() and any(p.startswith(f"{namespace}/") for p in runner.waiting()))
        operator.stop(signal.SIGKILL)
        operator.start()
        metrics = f"http://127.0.0.1:{plane.operator_metrics_port}/metrics"

        def passes() -> float:
            return sum(v for (n, ls), v in scrape(metrics).items()
                       if n == "inferstack_operator_reconciles_total" and ("namespace", namespace) in ls)  # fmt: skip

        # the new operator has looked at the stack several times while the Job ran
        wait_until("reconciles by the restarted operator", lambda: passes() >= 3, timeout=30)
        assert len(job_uids()) == 1, "the restarted operator created a second Job"
        assert status(namespace)["rollout"]["stepIndex"] == 0  # still evaluating, nothing decided without the Job
    finally:
        runner.release()
    cand = status(namespace)["candidateRevision"]
    wait_until(
        "verdict and shadow after the restart",
        lambda: (s := status(namespace)).get("rollout", {}).get("stepIndex", 0) >= 1 and s.get("candidateRevision") == cand,
        timeout=90,
    )
    assert len(job_uids()) == 1
    assert list(runs_in(runner, namespace).values()) == [1], "a case ran twice"
