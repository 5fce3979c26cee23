"""High availability on the real control plane: two operator processes, one Lease.

The leader is killed with SIGKILL in the middle of a canary step. The standby
takes the lease, and the rollout goes on at the same step with the same
timer; the recorded TrafficPlans show every step once. Each operator has its
own identity and its own write counters (its metrics port), so "the standby
wrote nothing while the leader lived" is measured, not assumed. The failover
time and the lease renewals per minute are printed (run with -s), not asserted.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml
from conftest import NS_GLOB, kget, kubectl, scrape, wait_until

from dataplane import VENV_BIN, DataPlane, Load, PlanRecorder, Proc, free_port
from scenario import BETTER_PROMPT, EXPECTED_STEPS, GOOD_PROMPT, support_stack, with_prompt

ELECTION = {"enabled": True, "leaseName": "inferstack-operator", "leaseDurationSeconds": 15, "renewDeadlineSeconds": 10, "retryPeriodSeconds": 2}
CANARY_SECONDS = 30  # long enough that the standby takes over inside the step


class Replica:
    """One operator process with its own identity and metrics port."""

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

    def writes(self) -> float:
        """Every write to the API server this process sent (objects, status, plans, Events), and any it refused."""
        return self.metric("inferstack_operator_api_writes_total") + self.metric("inferstack_operator_writes_fenced_total")

    def lease_writes(self) -> float:
        return self.metric("inferstack_operator_lease_writes_total")

    def leading(self) -> bool:
        return self.metric("inferstack_operator_leader", identity=self.identity) == 1


def status(namespace: str, name: str) -> dict:
    return (kget("istack", name, namespace) or {}).get("status", {})


def lease(namespace: str) -> dict:
    return (kget("lease", ELECTION["leaseName"], namespace) or {}).get("spec", {})


def test_leader_killed_mid_canary_the_standby_resumes_the_same_step_and_never_wrote_before(tmp_path, namespace):
    dp = DataPlane(tmp_path, namespace=NS_GLOB).start(operator=False)  # stand-in and router; the operators are ours
    a = b = None
    try:
        config = yaml.safe_load(dp.operator_config().read_text())
        # The Lease lives in the test's namespace: each run has its own, and it goes with the namespace.
        config["leaderElection"] = {**ELECTION, "leaseNamespace": namespace}
        path = tmp_path / "operator-ha.yaml"
        path.write_text(yaml.safe_dump(config))
        a = Replica("op-a", path, tmp_path)
        a.proc.start()
        wait_until("op-a leads", a.leading, timeout=30)
        b = Replica("op-b", path, tmp_path)
        b.proc.start()
        wait_until("op-b is a standby with warm caches", lambda: b.metric("inferstack_operator_leader", identity="op-b") == 0)
        assert lease(namespace)["holderIdentity"] == "op-a"

        manifest = support_stack("shop", GOOD_PROMPT)
        manifest["spec"]["rollout"]["steps"][1]["canary"]["duration"] = f"{CANARY_SECONDS}s"
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
        kubectl("wait", "-n", namespace, "--for=condition=Ready", "istack/shop", "--timeout=60s")
        key = dp.key_for(namespace)
        wait_until("the router serves the stack", lambda: dp.serves(f"{namespace}/shop"), timeout=30)

        # Steady state: nothing changes, so the only writes are the leader's lease renewals.
        time.sleep(3)  # the last passes of the first deployment settle
        t0, writes0, renewals0 = time.monotonic(), a.writes(), a.lease_writes()
        time.sleep(20)
        steady = time.monotonic() - t0
        steady_writes, renewals = a.writes() - writes0, a.lease_writes() - renewals0
        assert steady_writes == 0, "leader election must add no writes but the lease's"
        assert b.writes() == 0 and b.lease_writes() == 0

        with PlanRecorder(namespace, "shop") as plans, Load(dp.router_url, f"{namespace}/shop", api_key=key) as load:
            kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(with_prompt(manifest, BETTER_PROMPT)))
            cand = wait_until("candidate", lambda: status(namespace, "shop").get("candidateRevision"), timeout=60)
            wait_until("the canary step", lambda: (status(namespace, "shop").get("rollout") or {}).get("stepIndex") == 1, timeout=60)
            time.sleep(3)  # inside the step: analyses under way
            assert b.writes() == 0 and b.lease_writes() == 0, "the standby wrote while the leader lived"
            assert a.writes() > 0
            a.proc.stop(signal.SIGKILL)
            killed, killed_wall = time.monotonic(), datetime.now(UTC)
            at_kill = status(namespace, "shop")["rollout"]

            first_write = wait_until("op-b's first write", lambda: b.writes() > 0 and time.monotonic(), timeout=40, interval=0.05)
            took = datetime.fromisoformat(lease(namespace)["acquireTime"].replace("Z", "+00:00"))
            after = status(namespace, "shop")["rollout"]
            assert lease(namespace)["holderIdentity"] == "op-b" and b.leading()
            # The same step, with the same timer: the new leader resumed it, not restarted it.
            same = ("stepIndex", "step", "stepStartedAt")
            assert [after.get(k) for k in same] == [at_kill.get(k) for k in same], (at_kill, after)

            wait_until("promotion", lambda: (s := status(namespace, "shop")).get("stableRevision") == cand and s.get("phase") == "Healthy", timeout=120)
            wait_until("the last plan recorded", lambda: plans.steps() and plans.steps()[-1] == (cand, None, 0, 0), timeout=10)
        # Every step once, in order, across the failover.
        assert [(w, sh) for (_, c, w, sh) in plans.steps() if c == cand] == EXPECTED_STEPS, plans.steps()
        assert load.result.failed == 0, load.result.errors
        report = {
            "lease renewals per minute (steady state)": round(renewals * 60 / steady, 1),
            "other writes per minute (steady state)": steady_writes * 60 / steady,
            "kill -> lease taken (s)": round((took - killed_wall).total_seconds(), 2),
            "kill -> first write of the new leader (s)": round(first_write - killed, 2),
            "lease duration (s)": ELECTION["leaseDurationSeconds"],
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
