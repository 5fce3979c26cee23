"""The inferstack demo: three changes to a support bot on the local control plane, watched live.

Run it with ``make demo`` (or, with the control plane up,
``source .run/env && .venv/bin/python e2e/demo.py``). It uses the real
processes of the e2e tier (``e2e/dataplane.py``): the vLLM stand-in, the
router and the operator, with Prometheus as the gate source, in a fresh
namespace ``demo-<random>`` that it deletes at the end.

1. a better prompt goes shadow -> canary -> ramp -> 100 %;
2. a prompt that says "Never discuss refunds" is worse on the small billing
   slice only; the per-slice gate rolls it back in one write;
3. a GitOps revert (the stable spec applied again) is Healthy at once, with no
   new rollout;
4. a prompt that makes billing answers fluent and wrong (no refusal, same
   length: every rule check passes) is caught only by the pairwise LLM judge
   (the judge stand-in), in shadow, with the interval per slice in the live
   view, and rolled back before any user sees it.

It doubles as a smoke check: the exit status is non-zero when any of these
outcomes did not happen, or when a single request failed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dataplane import REPO, DataPlane, Load, PlanRecorder, wait_established, wait_for
from scenario import (
    BAD_PROMPT,
    BETTER_PROMPT,
    EXPECTED_STEPS,
    FLUENT_WRONG_PROMPT,
    GOOD_PROMPT,
    JUDGE_GATE,
    LATENCY_GATE,
    LATENCY_MAX_SECONDS,
    QUALITY_GATE,
    judged_stack,
)

EXPECTED_CONTEXT = "kwok-inferstack-e2e"
STACK = "support-bot"
GPU = "nvidia.com/gpu"

JUDGE_GATE_NAME = JUDGE_GATE["name"]


def manifest(system: str, judge_url: str) -> dict[str, Any]:
    return judged_stack(STACK, system, [QUALITY_GATE, LATENCY_GATE], judge_url=judge_url)


class DemoFailure(Exception):
    """An expected outcome did not happen."""


# ------------------------------------------------------------------ kubectl


def kubectl(*args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
    try:
        proc = subprocess.run(
            ["kubectl", *args], input=input, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        raise DemoFailure(f"kubectl {' '.join(args)} did not answer in {timeout:.0f}s") from e
    if check and proc.returncode != 0:
        raise DemoFailure(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def apply(namespace: str, body: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))


class Status:
    """Reads the stack's status through the Python client: fast enough to poll every second."""

    def __init__(self, namespace: str) -> None:
        from kubernetes import client, config

        self.namespace = namespace
        self.api = client.CustomObjectsApi(config.new_client_from_config(os.environ["KUBECONFIG"]))

    def __call__(self) -> dict[str, Any]:
        obj = self.api.get_namespaced_custom_object(
            "inferstack.dev", "v1alpha1", self.namespace, "inferencestacks", STACK
        )
        return obj.get("status") or {}


def free_gpus() -> int:
    """nvidia.com/gpu allocatable on schedulable nodes minus what live pods request."""
    nodes = json.loads(kubectl("get", "nodes", "-o", "json"))["items"]
    total = sum(
        int(n["status"].get("allocatable", {}).get(GPU, 0))
        for n in nodes
        if not n["spec"].get("unschedulable")
    )
    pods = json.loads(kubectl("get", "pods", "-A", "-o", "json"))["items"]
    used = sum(
        int(c.get("resources", {}).get("requests", {}).get(GPU, 0))
        for p in pods
        if p["status"].get("phase") not in ("Succeeded", "Failed") and p["spec"].get("nodeName")
        for c in p["spec"]["containers"]
    )
    return total - used


def wait_for_gpus(needed: int, timeout: float = 120) -> None:
    """Stable and candidate run side by side: wait while others' workloads hold every GPU."""
    free = free_gpus()
    if free >= needed:
        return
    print(
        f"   waiting for {needed} free {GPU} ({free} free now: other workloads on this cluster hold them)",
        flush=True,
    )
    try:
        wait_for(f"{needed} free {GPU}", lambda: free_gpus() >= needed, timeout=timeout, interval=3)
    except TimeoutError as e:
        raise DemoFailure(f"{e}: the cluster's GPUs are in use by others; try again when they finish") from e


# ------------------------------------------------------------------ the live view


def short(rev: str | None) -> str:
    return rev[:10] if rev else "-"


def counts(load: Load) -> tuple[Counter, int]:
    """A copy of the load's per-revision counts (the load thread keeps writing) and its failures."""
    for _ in range(10):
        try:
            return Counter(dict(load.result.by_revision)), load.result.failed
        except RuntimeError:  # changed size during the copy
            time.sleep(0.01)
    return Counter(), load.result.failed


MARK = {"Pass": "ok", "Fail": "FAIL", "Inconclusive": "wait"}


def judge_cell(g: dict[str, Any]) -> str:
    """``billing Δ-1.00[-1.00,-0.42] FAIL``: the judge's net wins per pair and its anytime-valid interval (within -1..1)."""
    where, verdict = g.get("slice") or "all", MARK.get(g.get("verdict", "?"), g.get("verdict", "?"))
    if g.get("delta") is None:
        return f"{where} - {verdict}"
    return f"{where} \u0394{g['delta']:+.2f}[{g['deltaLower']:+.2f},{g['deltaUpper']:+.2f}] {verdict}"


def gate_cells(st: dict[str, Any]) -> tuple[str, tuple]:
    """The gates column, and the part of it that counts as a change (verdicts, quality to 2 places)."""
    quality, latency, judge, key = [], [], [], []
    for g in st.get("gates") or []:
        v, b, verdict = g.get("value"), g.get("baseline"), g.get("verdict", "?")
        where = g.get("slice") or "all"
        if g["gate"] == JUDGE_GATE_NAME:
            judge.append(judge_cell(g))
            key.append((g["gate"], where, verdict, round(g.get("delta") or 0, 1)))
        elif g["gate"] == QUALITY_GATE["name"]:
            val = "-" if v is None else f"{v:.2f}"
            base = "-" if b is None else f"{b:.2f}"
            quality.append(f"{where} {val}/{base} {MARK.get(verdict, verdict)}")
            key.append((g["gate"], where, verdict, val, base))
        else:
            val = "-" if v is None else f"{v * 1000:.0f}ms"
            latency.append(f"{val} {MARK.get(verdict, verdict)}")
            key.append((g["gate"], where, verdict))
    cells = []
    if quality:
        cells.append("quality[" + "  ".join(quality) + "]")
    if latency:
        cells.append("p95[" + " ".join(latency) + "]")
    if judge:
        cells.append("judge[" + "  ".join(judge) + "]")
    return "  ".join(cells) or "-", tuple(key)


def view(st: dict[str, Any]) -> tuple[str, tuple]:
    traffic = st.get("traffic") or {}
    weights = f"{traffic.get('stableWeight', 100)}/{traffic.get('candidateWeight', 0)}/{traffic.get('shadowPercent', 0)}"
    step = (st.get("rollout") or {}).get("step") or "-"
    gates, gate_key = gate_cells(st)
    phase = st.get("phase", "?")
    stable, cand = short(st.get("stableRevision")), short(st.get("candidateRevision"))
    line = f"{phase:<11} {stable:<10} {cand:<10} {step:<16} {weights:<10} {gates}"
    return line, (phase, stable, cand, step, weights, gate_key)


HEADER = (
    f"{'time':>6}  {'phase':<11} {'stable':<10} {'candidate':<10} {'step':<16} {'s/c/shadow':<10} "
    "gates: value candidate/stable, verdict  | requests served since the change, per revision"
)


def delta_served(load: Load, since: Counter) -> Counter:
    return counts(load)[0] - since


def served_text(load: Load, since: Counter) -> str:
    now, _ = counts(load)
    return "served " + " ".join(f"{short(rev)}={n}" for rev, n in (now - since).most_common())


def watch(read: Callable[[], dict[str, Any]], load: Load, since: Counter, done: Callable[[dict[str, Any]], bool],
          timeout: float) -> dict[str, Any]:  # fmt: skip
    """Print one line whenever something a user would care about changed; return the final status."""
    print(HEADER)
    t0 = time.monotonic()
    last: tuple | None = None
    while True:
        st = read()
        line, key = view(st)
        elapsed = time.monotonic() - t0
        finished = done(st)
        if key != last or finished:
            print(f"{elapsed:5.1f}s  {line}  | {served_text(load, since)}", flush=True)
            last = key
        if finished:
            return st
        if elapsed > timeout:
            raise DemoFailure(f"no outcome after {timeout:.0f}s; last status: {json.dumps(st)[:600]}")
        time.sleep(1.0)


def steps_text(plans: list[tuple[str, str | None, int, int]], cand: str, stable: str) -> str:
    """The traffic plans the router was given for this change, e.g. shadow 50% > 1% > 5% > ... > promoted."""
    out = []
    for s, c, w, sh in plans:
        if c == cand:
            out.append(f"shadow {sh}%" if sh else f"{w}%")
        elif c is None and s == cand:
            out.append("100%")
        elif c is None and s == stable and out:
            out.append("back to stable")
    return " > ".join(out) or "-"


# ------------------------------------------------------------------ the story


class Demo:
    def __init__(self, namespace: str, dp: DataPlane, load: Load, plans: PlanRecorder) -> None:
        self.ns, self.dp, self.load, self.plans = namespace, dp, load, plans
        self.status = Status(namespace)
        self.rows: list[dict[str, Any]] = []
        self.problems: list[str] = []

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.problems.append(what)
            print(f"  !! expected: {what}", flush=True)

    def change(self, title: str, system: str, good: bool, caught_by: str = QUALITY_GATE["name"]) -> None:
        before = self.status()
        stable = before["stableRevision"]
        served0, failed0 = counts(self.load)
        plan0 = len(self.plans.plans)
        print(f"\n== {title}\n   prompt: {system!r}", flush=True)
        t0 = time.monotonic()
        apply(self.ns, manifest(system, self.dp.judge_url))
        cand = wait_for("the candidate revision", lambda: self.status().get("candidateRevision"), timeout=30)

        def done(st: dict[str, Any]) -> bool:
            if good:
                return st.get("stableRevision") == cand and st.get("phase") == "Healthy"
            return st.get("phase") == "Degraded"

        st = watch(self.status, self.load, served0, done, timeout=180)
        took = time.monotonic() - t0
        # the router applies the last plan a moment after the status says so
        if good:
            wait_for(
                "the router serving the new stable",
                lambda: counts(self.load)[0][cand] > served0[cand],
                timeout=10,
            )
        else:
            wait_for(
                "the rollback plan",
                lambda: self.plans.steps() and self.plans.steps()[-1][1] is None,
                timeout=10,
            )
        served, failed = counts(self.load)
        plans = self.plans.steps()[plan0:]
        cand_steps = [(w, sh) for (_, c, w, sh) in plans if c == cand]
        gates = {(g["gate"], g.get("slice", "")): g for g in st.get("gates") or []}
        if good:
            outcome = "promoted" if st.get("stableRevision") == cand else "NOT promoted"
            self.expect(outcome == "promoted", f"{title}: promoted")
            self.expect(cand_steps == EXPECTED_STEPS, f"{title}: steps {EXPECTED_STEPS}, saw {cand_steps}")
            self.expect(
                bool(plans) and plans[-1] == (cand, None, 0, 0),
                f"{title}: last plan is the candidate at 100 %",
            )
            self.expect(all(g["verdict"] == "Pass" for g in gates.values()), f"{title}: all gates Pass")
        else:
            outcome = "rolled back" if st.get("rolledBackRevision") == cand else "NOT rolled back"
            self.expect(outcome == "rolled back", f"{title}: rolled back")
            self.expect(st.get("stableRevision") == stable, f"{title}: stable unchanged")
            self.expect(st.get("traffic") == {"stableWeight": 100, "candidateWeight": 0, "shadowPercent": 0},
                        f"{title}: all traffic back on stable, no shadow")  # fmt: skip
            billing = gates.get((caught_by, "billing"), {})
            self.expect(
                billing.get("verdict") == "Fail", f"{title}: gate {caught_by} fails the billing slice"
            )
            if caught_by == QUALITY_GATE["name"]:
                self.expect(gates.get((caught_by, ""), {}).get("verdict") == "Pass",
                            f"{title}: the aggregate passes (only billing is worse)")  # fmt: skip
            else:
                # every rule check passed the fluent wrong answers: only the judge saw them
                self.expect(gates.get((QUALITY_GATE["name"], "billing"), {}).get("verdict") != "Fail",
                            f"{title}: the refusal-rate gate does not fail billing (no refusal to see)")  # fmt: skip
                self.expect(
                    delta_served(self.load, served0)[cand] == 0,
                    f"{title}: no user was served by the candidate",
                )
            self.expect(
                bool(plans) and plans[-1] == (stable, None, 0, 0), f"{title}: last plan is the stable alone"
            )
            reason = (st.get("rollout") or {}).get("rollbackReason", "")
            print(f"\n   status.rollout.rollbackReason: {reason}")
            self.expect(
                "billing" in reason and caught_by in reason,
                f"{title}: rollbackReason names {caught_by} and billing",
            )
            events = json.loads(kubectl("get", "events", "-n", self.ns, "-o", "json"))["items"]
            warnings = [e for e in events if e.get("type") == "Warning" and e.get("reason") == "GateFailed"]
            for e in warnings:
                print(
                    f"   event: {e['type']} {e['reason']} {e['involvedObject']['kind']}/{e['involvedObject']['name']}: {e['message']}"
                )
            self.expect(
                any("billing" in e.get("message", "") for e in warnings),
                f"{title}: a Warning GateFailed event",
            )
        self.expect(failed == failed0, f"{title}: no failed requests ({failed - failed0} failed)")
        delta = served - served0
        print(f"   -> {outcome} in {took:.1f}s; requests served: "
              + ", ".join(f"{short(r)}={n}" for r, n in delta.most_common()) + f"; failed: {failed - failed0}")  # fmt: skip
        self.rows.append({
            "change": title, "outcome": outcome, "took": took, "steps": steps_text(plans, cand, stable),
            "served": f"{delta[stable]}/{delta[cand]}", "failed": failed - failed0,
        })  # fmt: skip

    def revert(self, title: str, system: str) -> None:
        before = self.status()
        stable = before["stableRevision"]
        served0, failed0 = counts(self.load)
        plan0 = len(self.plans.plans)
        serial = self.plans.plans[-1][0]
        print(f"\n== {title}\n   prompt: {system!r}", flush=True)
        t0 = time.monotonic()
        apply(self.ns, manifest(system, self.dp.judge_url))

        def done(st: dict[str, Any]) -> bool:
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions") or [])
            return st.get("phase") == "Healthy" and ready

        st = watch(self.status, self.load, served0, done, timeout=30)
        took = time.monotonic() - t0
        time.sleep(3)  # a rollout would have started by now
        st = self.status()
        served, failed = counts(self.load)
        self.expect(st.get("phase") == "Healthy", f"{title}: Healthy")
        self.expect(
            st.get("stableRevision") == stable and not st.get("candidateRevision"), f"{title}: no new rollout"
        )
        self.expect(self.plans.plans[-1][0] == serial, f"{title}: no new traffic plan")
        self.expect(failed == failed0, f"{title}: no failed requests")
        delta = served - served0
        outcome = "Healthy, no rollout" if len(self.plans.plans) == plan0 else "new plan written"
        print(
            f"   -> {outcome} in {took:.1f}s; stable stays {short(stable)}; traffic plan serial stays {serial}"
        )
        self.rows.append({"change": title, "outcome": outcome, "took": took, "steps": "none",
                          "served": f"{delta[stable]}/0", "failed": failed - failed0})  # fmt: skip

    def summary(self, total: float) -> None:
        print("\n== Summary")
        cols = [("change", "change"), ("outcome", "outcome"), ("took", "time"), ("steps", "steps seen (traffic plans)"),
                ("served", "served stable/cand"), ("failed", "failed")]  # fmt: skip
        cells = [[f"{r[k]:.1f}s" if k == "took" else str(r[k]) for k, _ in cols] for r in self.rows]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(cols)]
        print("  ".join(h.ljust(w) for (_, h), w in zip(cols, widths, strict=True)).rstrip())
        print("  ".join("-" * w for w in widths))
        for c in cells:
            print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
        res = self.load.result
        print(
            f"\nload: {res.sent} requests sent, {res.failed} failed"
            + (f" {dict(res.errors)}" if res.errors else "")
        )
        self.expect(res.failed == 0, "no failed requests over the whole demo")
        print(f"\n$ kubectl get istack -n {self.ns} -o wide")
        print(kubectl("get", "istack", "-n", self.ns, "-o", "wide").rstrip())
        print(f"\ntotal run time {total:.0f}s")


# ------------------------------------------------------------------ setup and cleanup


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    t_start = time.monotonic()
    # Ctrl-C, kill and a closed terminal all end in the same cleanup (SIGINT too when a
    # non-interactive shell started us in the background with it ignored).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    if not os.environ.get("KUBECONFIG") or not os.environ.get("INFERSTACK_PROMETHEUS_URL"):
        print(
            "no local control plane in the environment: run `make cluster-up` and `source .run/env`",
            file=sys.stderr,
        )
        return 2
    if os.environ.get("INFERSTACK_BIN"):
        os.environ["PATH"] = f"{os.environ['INFERSTACK_BIN']}:{os.environ['PATH']}"
    context = kubectl("config", "current-context", check=False).strip()
    if context != EXPECTED_CONTEXT:
        print(
            f"refusing to run against kube context {context!r}; only {EXPECTED_CONTEXT!r} (make cluster-up)",
            file=sys.stderr,
        )
        return 2

    namespace = f"demo-{uuid.uuid4().hex[:6]}"
    log_dir = REPO / ".run" / namespace
    dp: DataPlane | None = None
    load: Load | None = None
    plans: PlanRecorder | None = None
    demo: Demo | None = None
    code = 1
    try:
        print(
            f"== Setup: CRD, namespace {namespace}, stand-in + router + operator (logs in {log_dir})",
            flush=True,
        )
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        wait_established("inferencestacks.inferstack.dev")
        wait_for_gpus(2)  # one replica of the stable and one of the candidate, 1 GPU each
        kubectl("create", "namespace", namespace)
        dp = DataPlane(log_dir, namespace=namespace, judge=True)
        dp.start()
        apply(namespace, manifest(GOOD_PROMPT, dp.judge_url))
        kubectl("wait", "-n", namespace, "--for=condition=Ready", f"istack/{STACK}", "--timeout=60s")
        wait_for("the router serving the stack", lambda: dp.serves(f"{namespace}/{STACK}"), timeout=30)
        status = Status(namespace)()
        print(f"   {STACK} Ready: stable {status['stableRevision']}, gates answer-quality (per slice, "
              f"-20% vs stable), p95-latency (<= {LATENCY_MAX_SECONDS:g}s) and {JUDGE_GATE_NAME} (a pairwise LLM "
              "judge on shadow pairs, per slice, margin 0.2)", flush=True)  # fmt: skip
        plans = PlanRecorder(namespace, STACK).__enter__()
        # The demo's clients call the router like a real user: with an API key of the namespace
        # (kubectl istack key create makes one the same way: a Secret holding only its hash).
        load = Load(dp.router_url, f"{namespace}/{STACK}", api_key=dp.key_for(namespace)).__enter__()
        print("   load: 40 req/s from 400 users; slices billing 4%, shipping 36%, general 60%", flush=True)
        wait_for("the first answers", lambda: counts(load)[0].total() > 0, timeout=10)

        demo = Demo(namespace, dp, load, plans)
        demo.change("1. better prompt", BETTER_PROMPT, good=True)
        demo.change("2. 'Never discuss refunds'", BAD_PROMPT, good=False)
        demo.revert("3. GitOps revert", BETTER_PROMPT)
        demo.change(
            "4. 'Always quote the 2019 refund policy'",
            FLUENT_WRONG_PROMPT,
            good=False,
            caught_by=JUDGE_GATE_NAME,
        )
        load.__exit__()
        demo.summary(time.monotonic() - t_start)
        if demo.problems:
            print(f"\nFAILED: {len(demo.problems)} expected outcome(s) did not happen:", file=sys.stderr)
            for p in demo.problems:
                print(f"  - {p}", file=sys.stderr)
        else:
            print("OK: promoted, rolled back on the billing slice, reverted, a fluent wrong prompt caught by the judge; "
                  "0 failed requests")  # fmt: skip
        code = 1 if demo.problems else 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        code = 130
    except (DemoFailure, TimeoutError, RuntimeError) as e:
        print(f"\nFAILED: {e}\n(logs in {log_dir})", file=sys.stderr)
        code = 1
    finally:
        # Ignore further Ctrl-C while cleaning up: a half-done cleanup leaks processes.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if load is not None:
            load.__exit__()
        if plans is not None:
            plans.__exit__()
        if dp is not None:
            dp.stop()
        _stop_leftover_children()
        kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)
        print(f"cleaned up: processes stopped, namespace {namespace} deleted", file=sys.stderr)
    return code


def _stop_leftover_children() -> None:
    """Stop any child process still running: one interrupted while DataPlane.start() waited for it."""
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            pid = int(stat.parent.name)
            try:
                os.kill(pid, signal.SIGTERM)
                for _ in range(100):
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        break
                    time.sleep(0.1)
                else:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


if __name__ == "__main__":
    sys.exit(main())
