"""High availability on the real control plane: two operator processes, one Lease.

The leader is killed with SIGKILL in the middle of a canary step. The standby
takes the lease, and the rollout goes on at the same step with the same
timer; the recorded TrafficPlans show every step once.

Who wrote what is taken from the API server's audit log, not from the
processes: every request of a replica carries its identity in the user agent
(``inferstack-operator/<version> (<identity>)``, kopf's ``kopf/<version>
(<identity>)``), while both keep the one field manager ``inferstack-operator``
(server-side apply ownership must not change hands at a failover). So "the
standby sent no write while the leader lived", "the two never both wrote" and
"only lease renewals in steady state" are the server's record. The takeover
is asserted within a lease duration plus a retry period of the kill, and
never sooner than a lease duration after the old leader's last renewal. The
failover time and the writes per minute are printed (run with -s).

Needs the cluster's audit log: ``INFERSTACK_AUDIT=1 make cluster-up``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from conftest import NS_GLOB, kget, kubectl, scrape, wait_until

from audit import Audit, Request, audit_log
from dataplane import VENV_BIN, DataPlane, Load, PlanRecorder, Proc, free_port
from inferstack.controller.kube import FIELD_MANAGER
from scenario import BETTER_PROMPT, EXPECTED_STEPS, GOOD_PROMPT, support_stack, with_prompt

ELECTION = {"enabled": True, "leaseName": "inferstack-operator", "leaseDurationSeconds": 15, "renewDeadlineSeconds": 10, "retryPeriodSeconds": 2}
LEASE, RETRY = ELECTION["leaseDurationSeconds"], ELECTION["retryPeriodSeconds"]
CANARY_SECONDS = 30  # long enough that the standby takes over inside the step
STEADY_SECONDS = 30
OPERATOR_AGENTS = ("inferstack-operator/", "kopf/")


class Replica:
    """One operator process with its own identity (in the Lease and its user agent) and metrics port."""

    def __init__(self, identity: str, config: Path, log_dir: Path) -> None:
        self.identity, self.port = identity, free_port()
        self.proc = Proc(
            identity,
            [str(VENV_BIN / "inferstack-operator"), "--kubeconfig", os.environ["KUBECONFIG"], "--config", str(config),
             "--metrics-host", "127.0.0.1", "--metrics-port", str(self.port), "--namespace", NS_GLOB, "--identity", identity],
            log_dir, f"http://127.0.0.1:{self.port}/metrics",
        )  # fmt: skip

    def metric(self, name: str, **labels: str) -> float:
        return sum(v for (n, ls), v in scrape(f"http://127.0.0.1:{self.port}/metrics").items() if n == name and set(labels.items()) <= ls)

    def leading(self) -> bool:
        return self.metric("inferstack_operator_leader", identity=self.identity) == 1

    def fenced(self) -> float:
        """Writes this process refused to send (never in the audit log: they were not sent)."""
        return self.metric("inferstack_operator_writes_fenced_total")


def status(namespace: str, name: str) -> dict:
    return (kget("istack", name, namespace) or {}).get("status", {})


def lease(namespace: str) -> dict:
    return (kget("lease", ELECTION["leaseName"], namespace) or {}).get("spec", {})


def writes(requests: list[Request], replica: str) -> list[Request]:
    return [r for r in requests if r.write and r.replica == replica]


def per_minute(n: int, seconds: float) -> float:
    return round(n * 60 / seconds, 1)


@pytest.fixture
def audit() -> Audit:
    path = audit_log()
    if path is None or not path.exists():
        msg = "needs the API server's audit log: start the cluster with INFERSTACK_AUDIT=1 make cluster-up"
        if os.environ.get("INFERSTACK_REQUIRE_E2E") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return Audit(path)


def test_leader_killed_mid_canary_the_standby_resumes_the_same_step_and_never_wrote_before(tmp_path, namespace, audit):
    dp = DataPlane(tmp_path, namespace=NS_GLOB).start(operator=False)  # stand-in and router; the operators are ours
    a = b = None
    # Unique on a shared cluster: another session's run of this test has other identities.
    id_a, id_b = f"{namespace}-op-a", f"{namespace}-op-b"
    try:
        config = yaml.safe_load(dp.operator_config().read_text())
        # The Lease lives in the test's namespace: each run has its own, and it goes with the namespace.
        config["leaderElection"] = {**ELECTION, "leaseNamespace": namespace}
        path = tmp_path / "operator-ha.yaml"
        path.write_text(yaml.safe_dump(config))
        start = audit.mark()
        a = Replica(id_a, path, tmp_path)
        a.proc.start()
        wait_until("op-a leads", a.leading, timeout=30)
        b = Replica(id_b, path, tmp_path)
        b.proc.start()
        wait_until("op-b is a standby with warm caches", lambda: b.metric("inferstack_operator_leader", identity=id_b) == 0)
        assert lease(namespace)["holderIdentity"] == id_a

        manifest = support_stack("shop", GOOD_PROMPT)
        manifest["spec"]["rollout"]["steps"][1]["canary"]["duration"] = f"{CANARY_SECONDS}s"
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
        kubectl("wait", "-n", namespace, "--for=condition=Ready", "istack/shop", "--timeout=150s")
        key = dp.key_for(namespace)
        wait_until("the router serves the stack", lambda: dp.serves(f"{namespace}/shop"), timeout=30)

        # Steady state: nothing changes, so the leader's only writes are its lease renewals,
        # and the standby's only requests are reads.
        time.sleep(3)  # the last passes of the first deployment settle
        q0, t0 = audit.mark(), time.monotonic()
        time.sleep(STEADY_SECONDS)
        quiet, steady = audit.requests(q0), time.monotonic() - t0
        renewals = [r for r in writes(quiet, id_a) if r.what == "update leases"]
        others = [r for r in writes(quiet, id_a) if r.what != "update leases"]
        assert others == [], Counter(r.what for r in others)
        assert len(renewals) >= steady // (RETRY + 1), "the leader renews every retry period"
        assert writes(quiet, id_b) == [], "the standby wrote"
        standby_reads = Counter(r.what for r in quiet if r.replica == id_b and not r.write)

        with PlanRecorder(namespace, "shop") as plans, Load(dp.router_url, f"{namespace}/shop", api_key=key) as load:
            kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(with_prompt(manifest, BETTER_PROMPT)))
            cand = wait_until("candidate", lambda: status(namespace, "shop").get("candidateRevision"), timeout=60)
            wait_until("the canary step", lambda: (status(namespace, "shop").get("rollout") or {}).get("stepIndex") == 1, timeout=60)
            time.sleep(3)  # inside the step: analyses under way
            before_kill = audit.requests(start)
            assert writes(before_kill, id_b) == [], "the standby wrote while the leader lived"
            assert writes(before_kill, id_a), "the leader's writes are in the audit log under its identity"
            a.proc.stop(signal.SIGKILL)
            killed, killed_wall = time.monotonic(), datetime.now(UTC)
            at_kill = status(namespace, "shop")["rollout"]

            def b_wrote_besides_the_lease() -> bool:
                return any(r.resource != "leases" for r in writes(audit.requests(start), id_b)) and time.monotonic()

            first_write = wait_until("op-b's first write", b_wrote_besides_the_lease, timeout=LEASE + 4 * RETRY, interval=0.2)
            after = status(namespace, "shop")["rollout"]
            assert lease(namespace)["holderIdentity"] == id_b and b.leading()
            # The same step, with the same timer: the new leader resumed it, not restarted it.
            same = ("stepIndex", "step", "stepStartedAt")
            assert [after.get(k) for k in same] == [at_kill.get(k) for k in same], (at_kill, after)

            wait_until("promotion", lambda: (s := status(namespace, "shop")).get("stableRevision") == cand and s.get("phase") == "Healthy", timeout=120)
            wait_until("the last plan recorded", lambda: plans.steps() and plans.steps()[-1] == (cand, None, 0, 0), timeout=10)
        # Every step once, in order, across the failover.
        assert [(w, sh) for (_, c, w, sh) in plans.steps() if c == cand] == EXPECTED_STEPS, plans.steps()
        assert load.result.failed == 0, load.result.errors

        # The server's record of the whole run.
        run = audit.requests(start)
        by_a, by_b = writes(run, id_a), writes(run, id_b)
        # Every write the operator sent into this test's namespace names one of the two replicas.
        ours = [r for r in run if r.write and r.namespace == namespace and r.user_agent.startswith(OPERATOR_AGENTS)]
        assert {r.replica for r in ours} <= {id_a, id_b}, Counter(r.user_agent for r in ours)
        # Never both: the standby's first write came after the leader's last one was answered,
        # and it was the takeover of the Lease.
        assert by_b[0].received > max(r.completed for r in by_a), (by_a[-1], by_b[0])
        takeover = by_b[0]
        assert (takeover.what, takeover.code) == ("update leases", 200), takeover
        last_renewal = max((r for r in by_a if r.resource == "leases" and r.code == 200), key=lambda r: r.received)
        kill_to_takeover = (takeover.received - killed_wall).total_seconds()
        renewal_to_takeover = (takeover.received - last_renewal.received).total_seconds()
        # Safe: the standby waited a whole lease duration from (at least) the old leader's last renewal.
        assert renewal_to_takeover >= LEASE, renewal_to_takeover
        # Live: it took over within a lease duration and one retry period of the kill (it sees the
        # last renewal at its next read, at most a retry period late, then waits the lease out).
        assert kill_to_takeover <= LEASE + RETRY, kill_to_takeover
        assert b.fenced() == 0
        # Ownership did not change hands: both replicas are the one field manager.
        def managers(kind: str, **only: str) -> set[str]:
            items = json.loads(kubectl("get", kind, "-n", namespace, "-o", "json", "--show-managed-fields").stdout)["items"]
            return {m["manager"] for i in items for m in i["metadata"].get("managedFields") or [] if only.items() <= m.items()}

        assert managers("trafficplans") == {FIELD_MANAGER}
        assert managers("istack", subresource="status") == {FIELD_MANAGER}
        first_other = next(r for r in by_b if r.resource != "leases")
        report = {
            "lease renewals per minute (steady state, audit log)": per_minute(len(renewals), steady),
            "other writes per minute (steady state, audit log)": per_minute(len(others), steady),
            "standby requests per minute (steady state)": {k: per_minute(v, steady) for k, v in standby_reads.items()},
            "kill -> lease taken (s)": round(kill_to_takeover, 2),
            "old leader's last renewal -> lease taken (s)": round(renewal_to_takeover, 2),
            "kill -> first write of the new leader besides the lease (s)": round((first_other.received - killed_wall).total_seconds(), 2),
            "kill -> seen by the test (s)": round(first_write - killed, 2),
            "writes by op-a / op-b (run)": [len(by_a), len(by_b)],
            "lease duration, retry period (s)": [LEASE, RETRY],
        }
        print("\nleader election:", json.dumps(report))
        (tmp_path / "report.json").write_text(json.dumps(report))

        # A clean shutdown gives the lease up: the next standby would not wait out a lease duration.
        b.proc.stop(signal.SIGTERM)
        assert not lease(namespace).get("holderIdentity")
    finally:
        for r in (a, b):
            if r is not None:
                r.proc.stop()
        dp.stop()
