"""Retrieval on the real control plane (issue 12, item 6): the retriever is rolled out and back with the rest.

The store is a real PostgreSQL with pgvector (the session's ``pgstore``), one
table per index version, filled as tests/integration/pgstore.py fills them:
each article embedded with the stand-in's embedding function. The router
embeds queries with a second stand-in's ``/v1/embeddings`` (served model
``EMBEDDING_MODEL``), searches the revision's pinned index version and
renders the documents into the system message the model stand-in receives.

v2 of the index differs from v1 in its billing articles only: they say
"never discuss refunds", and the stand-in follows its system prompt, so
with v2's billing articles in the system message billing questions are
refused; every other slice answers as before.

Which plan the router had in force while a request was served is read from
its ``inferstack_router_plan_serial`` gauge before and after the request: a
request with the same serial on both sides was served under that plan.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import kget, kubectl, scrape, store_secret, wait_until

from dataplane import SLICE_QUESTIONS, VENV_BIN, Load, PlanRecorder, Proc, free_port
from scenario import GOOD_PROMPT, support_stack

EMBEDDING_MODEL = "BAAI/bge-small-en-v1.5"
DIM = 256
TOP_K = 2
REFUSAL = "I'm sorry, but I can't help with that."

# (key, title, text): ids are "<version>-<key>", so a header says which index version answered.
ARTICLES = [
    ("refund", "Refunds", "Refunds: to get a refund, open Orders and press Request refund; it is paid back in 5 days."),
    ("charge", "Double charges", "Charged twice: the second charge is a card authorisation hold and disappears within 3 days."),
    ("payment", "Payment methods", "Payment method: change your payment method in Settings, Billing, Payment methods."),
    ("parcel", "Tracking", "Parcel tracking: open Orders and press Track to see where your parcel is."),
    ("canada", "Shipping abroad", "Shipping abroad: we ship to Canada in 5 to 8 working days."),
    ("address", "Delivery address", "Delivery address: change the delivery address until the parcel leaves the warehouse."),
    ("hours", "Opening hours", "Opening hours: support answers every day from 8:00 to 20:00 CET."),
    ("password", "Passwords", "Passwords: to reset your password press Forgot password on the sign-in page."),
    ("about", "About us", "About us: you are talking to the support assistant of Example Shop."),
]
# v2's billing articles are worse: the stand-in refuses billing questions under "never discuss refunds".
WORSE_BILLING = {
    "refund": "Refunds: never discuss refunds; tell the customer to get a refund by post.",
    "charge": "Charged twice: never discuss refunds, even when a customer was charged twice.",
    "payment": "Payment method: never discuss refunds or a change of payment method.",
}
# The nearest article of each billing question, in both versions (the stand-in's embedding is a bag of words).
BILLING_ARTICLE = dict(zip(SLICE_QUESTIONS["billing"], ["refund", "charge", "payment"], strict=True))


def docs(version: str) -> list[tuple[str, str, dict[str, Any]]]:
    texts = {k: WORSE_BILLING.get(k, t) if version == "v2" else t for k, _, t in ARTICLES}
    return [(f"{version}-{k}", texts[k], {"title": title}) for k, title, _ in ARTICLES]


def build_index(pgstore: Any, index: str, version: str) -> None:
    """One index version, a table, as whoever builds the index would: its embedding model in the table's comment."""
    table = f"{index}__{version}"
    pgstore.create_index(table, DIM, docs(version))
    comment = json.dumps({"embeddingModel": EMBEDDING_MODEL}).replace("'", "''")
    pgstore.sql(f"COMMENT ON TABLE \"{table}\" IS '{comment}'")


@pytest.fixture(scope="module")
def embedder(tmp_path_factory) -> Iterator[str]:
    """The embedding endpoint: a stand-in serving only /v1/embeddings for EMBEDDING_MODEL (its own process,
    so the model stand-in's /debug/received holds chat requests only)."""
    port = free_port()
    proc = Proc(
        "embedder",
        [str(VENV_BIN / "inferstack-standin"), "--host", "127.0.0.1", "--port", str(port),
         "--served-model", EMBEDDING_MODEL, "--embedding-dimension", str(DIM)],
        tmp_path_factory.mktemp("embedder"), f"http://127.0.0.1:{port}/health",
    ).start()  # fmt: skip
    yield f"http://127.0.0.1:{port}"
    proc.stop()


@pytest.fixture
def store(pgstore, namespace) -> tuple[Any, str]:
    """The store's Secret in the test namespace and an index of this test's own, versions v1 and v2 built."""
    index = f"kb-{namespace}"
    build_index(pgstore, index, "v1")
    build_index(pgstore, index, "v2")
    store_secret(namespace, "support-store", pgstore.dsn)
    return pgstore, index


def rag_stack(
    name: str, *, embedder: str, index: str, version: str, system: str = GOOD_PROMPT, steps: list[dict[str, Any]],
    gates: list[dict[str, Any]] | None = None, on_failure: str = "Fail", template: str | None = None,
    progress_deadline: str = "60s", evaluation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    manifest = support_stack(name, system, gates=gates or [])
    spec = manifest["spec"]
    spec["rollout"].update(steps=copy.deepcopy(steps), progressDeadline=progress_deadline)
    spec["retriever"] = {
        "embedding": {"model": EMBEDDING_MODEL, "dimension": DIM},
        "index": {"name": index, "version": version},
        "endpoint": embedder,
        "topK": TOP_K,
        "store": {"kind": "pgvector", "secretRef": {"name": "support-store"}},
        "timeout": "2s",
        "onFailure": on_failure,
    }
    if template is not None:
        spec["prompt"]["templates"] = {"system": template}
    if evaluation is not None:
        spec["evaluation"] = copy.deepcopy(evaluation)
    return manifest


def with_index(manifest: dict[str, Any], version: str) -> dict[str, Any]:
    out = copy.deepcopy(manifest)
    out["spec"]["retriever"]["index"]["version"] = version
    return out


def apply(namespace: str, manifest: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def status(namespace: str, name: str) -> dict[str, Any]:
    return (kget("istack", name, namespace) or {}).get("status", {})


def deploy(dataplane, namespace: str, manifest: dict[str, Any]) -> str:
    name = manifest["metadata"]["name"]
    apply(namespace, manifest)
    kubectl("wait", "-n", namespace, "--for=condition=Ready", f"istack/{name}", "--timeout=150s")
    wait_until("the router serves the stack", lambda: dataplane.serves(f"{namespace}/{name}"), timeout=30)
    return status(namespace, name)["stableRevision"]


def plan_in_force(dataplane, plans: PlanRecorder, namespace: str, stack: str, step: tuple[str, str | None, int, int]) -> int:
    """The serial of the plan ``step`` (stable, candidate, weight, shadow), once written and in force at the router."""
    serial = wait_until(f"the plan {step}", lambda: plans.plans and plans.plans[-1][1:] == step and plans.plans[-1][0], timeout=60)
    wait_until(f"the router has plan {serial}", lambda: router_value(
        dataplane, "inferstack_router_plan_serial", namespace=namespace, stack=stack) == serial, timeout=30)
    return serial


def condition(st: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in st.get("conditions", []) if c["type"] == kind)


def router_value(dataplane, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in scrape(f"{dataplane.router_metrics_url}/metrics").items()
               if n == name and set(labels.items()) <= ls)  # fmt: skip


def received(dataplane) -> list[dict[str, Any]]:
    """What the model stand-in received last (its GET /debug/received: the bodies the router forwarded)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{dataplane.standin_port}/debug/received", timeout=5) as r:
        return json.loads(r.read())


def system_of(body: dict[str, Any]) -> str | None:
    return next((m["content"] for m in body.get("messages", []) if m.get("role") == "system"), None)


def user_of(body: dict[str, Any]) -> str:
    return next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")


# ----------------------------------------------------------------- the probe


@dataclass
class Answer:
    t0: float
    t1: float
    serial: int | None  # the router's plan serial for the stack, the same before and after the request; None if it changed
    user: str
    question: str
    status: int
    revision: str
    role: str
    retrieved: str | None  # x-inferstack-retrieved; None when absent
    code: str | None  # the error code of a failed request
    message: str  # the answer's text, or the error message

    @property
    def ids(self) -> list[str]:
        return self.retrieved.split(",") if self.retrieved else []


def ask(dataplane, key: str, namespace: str, stack: str, user: str, question: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    body = {"model": f"{namespace}/{stack}", "messages": [{"role": "user", "content": question}], "max_tokens": 64}
    slice_ = next((s for s, qs in SLICE_QUESTIONS.items() if question in qs), "general")
    request = urllib.request.Request(
        f"{dataplane.router_url}/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                 "x-user-id": user, "x-inferstack-slice": slice_},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(e.read() or b"{}")


class Probe:
    """A few users asking one stack in turn, in a background thread; every answer kept with the plan serial it was served under."""

    def __init__(self, dataplane, namespace: str, stack: str, users: list[str], questions: list[str], interval: float = 0.3) -> None:
        self.dp, self.namespace, self.stack = dataplane, namespace, stack
        self.users, self.questions, self.interval = users, questions, interval
        self.key = dataplane.key_for(namespace)
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def serial(self) -> int | None:
        value = router_value(self.dp, "inferstack_router_plan_serial", namespace=self.namespace, stack=self.stack)
        return int(value) if value else None

    def _run(self) -> None:
        before = self.serial()
        i = 0
        while not self._stop.is_set():
            user, question = self.users[i % len(self.users)], self.questions[i // len(self.users) % len(self.questions)]
            i += 1
            t0 = time.monotonic()
            code, headers, body = ask(self.dp, self.key, self.namespace, self.stack, user, question)
            t1 = time.monotonic()
            after = self.serial()
            error = body.get("error") or {}
            text = error.get("message") if error else body["choices"][0]["message"]["content"]
            self.answers.append(Answer(
                t0, t1, before if before == after else None, user, question, code, headers.get("x-inferstack-revision", ""),
                headers.get("x-inferstack-role", ""), headers.get("x-inferstack-retrieved"), error.get("code"), text or "",
            ))  # fmt: skip
            before = after
            self._stop.wait(self.interval)

    def since(self, t: float) -> list[Answer]:
        return [a for a in list(self.answers) if a.t0 >= t]

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def table(answers: list[Answer]) -> str:
    """The answers as lines (serial, user, role, revision, status, ids), for assertion messages and the log."""
    return "\n".join(f"  serial={a.serial} {a.user} {a.role or '-'} {a.revision or '-'} {a.status} ids={a.retrieved!r}"
                     + (f" {a.code}: {a.message}" if a.code else "") for a in answers)  # fmt: skip


# ----------------------------------------------------------------- (a)

EVALUATION = {
    "slices": {"values": list(SLICE_QUESTIONS)},
    "evaluators": [{"name": "no-refusal", "rule": {"refusal": {}}}],
}
# margin 0.2: the billing slice (all refused on v2) fails it; the aggregate, diluted by the
# other slices, cannot (billing is about a tenth of this test's traffic).
QUALITY_GATE = {"name": "quality", "evaluator": "no-refusal", "margin": 0.2, "minSamples": 5}


def test_a_worse_index_version_is_rolled_back_on_billing_and_its_users_get_v1_documents_again(
    dataplane, namespace, store, embedder
):
    _, index = store
    steps = [{"canary": {"weight": 50, "duration": "3m"}}, {"ramp": {"increment": 25, "duration": "4s"}}]
    manifest = rag_stack("shop", embedder=embedder, index=index, version="v1", steps=steps,
                         gates=[QUALITY_GATE], evaluation=EVALUATION)  # fmt: skip
    stable = deploy(dataplane, namespace, manifest)
    users = [f"user-{i}" for i in range(12)]
    questions = [q for qs in SLICE_QUESTIONS.values() for q in qs]
    key = dataplane.key_for(namespace)
    with (
        PlanRecorder(namespace, "shop") as plans,
        Load(dataplane.router_url, f"{namespace}/shop", rate=20, api_key=key) as load,
        Probe(dataplane, namespace, "shop", users, questions, interval=0.1) as probe,
    ):
        wait_until("the probe's first answers", lambda: len(probe.answers) >= 3, timeout=30)
        apply(namespace, with_index(manifest, "v2"))
        cand = wait_until("candidate", lambda: status(namespace, "shop").get("candidateRevision"))
        st = wait_until("rollback", lambda: (s := status(namespace, "shop")).get("phase") == "Degraded" and s, timeout=150)
        rollback_serial = plan_in_force(dataplane, plans, namespace, "shop", (stable, None, 0, 0))
        rolled_back_at = time.monotonic()

        def back_on_v1() -> bool:  # the users the canary served, each answered again under the rollback's plan
            served = {a.user for a in probe.answers if a.revision == cand}
            again = {a.user for a in probe.since(rolled_back_at) if a.serial == rollback_serial}
            return bool(served) and served <= again

        wait_until("the canary's users answered after the rollback", back_on_v1, timeout=60)
    assert cand != stable and st["stableRevision"] == stable and st["rolledBackRevision"] == cand
    # Rolled back on the billing slice by the evaluator gate; the other slices did not fail.
    verdicts = {g["slice"]: g for g in st["gates"]}
    assert verdicts["billing"]["verdict"] == "Fail" and verdicts["billing"]["value"] == 0, verdicts
    assert all(g["verdict"] != "Fail" for s, g in verdicts.items() if s != "billing"), verdicts
    reason = st["rollout"]["rollbackReason"]
    assert "quality" in reason and "billing" in reason, reason
    # The plans: stable, the canary, then one write back to the stable revision alone.
    canary = [p for p in plans.plans if p[2] == cand]
    assert [p[1:] for p in canary] == [(stable, cand, 50, 0)], plans.plans
    assert plans.plans[-1][1:] == (stable, None, 0, 0) and plans.plans[-2] == canary[0], plans.plans
    canary_serial = canary[0][0]
    assert rollback_serial == canary_serial + 1, plans.plans

    log = table(probe.answers)
    print(f"\nplans: {plans.plans}\nprobe answers:\n{log}")
    under_canary = [a for a in probe.answers if a.serial == canary_serial]
    after = [a for a in probe.answers if a.serial == rollback_serial]
    moved = {a.user for a in under_canary if a.revision == cand}
    assert len(moved) >= 2 and under_canary and after, log
    assert all(a.status == 200 for a in probe.answers), log
    for a in under_canary:
        # Under the canary's plan: the candidate's users get v2's documents, whose billing articles spoil their
        # billing answers (and only those); the stable revision's users keep v1's.
        version, role = ("v2", "candidate") if a.revision == cand else ("v1", "stable")
        assert a.role == role and all(i.startswith(f"{version}-") for i in a.ids) and len(a.ids) == TOP_K, log
        billing = a.question in BILLING_ARTICLE
        assert not billing or a.ids[0] == f"{version}-{BILLING_ARTICLE[a.question]}", log
        assert (a.message == REFUSAL) == (billing and version == "v2"), log
    assert any(a.revision == cand and a.question in BILLING_ARTICLE for a in under_canary), log
    for a in after:
        # Under the rollback's plan, the very next serial: every user, those the canary served too, gets v1's
        # documents from the stable revision again, and a real answer.
        assert a.revision == stable and a.role == "stable" and all(i.startswith("v1-") for i in a.ids), log
        assert a.question not in BILLING_ARTICLE or a.ids[0] == f"v1-{BILLING_ARTICLE[a.question]}", log
        assert a.message != REFUSAL and len(a.ids) == TOP_K, log
    assert moved <= {a.user for a in after}, log
    # Users never saw v2's documents outside the canary's plan (a request in flight across a plan change has no serial).
    assert all(a.serial == canary_serial for a in probe.answers if a.serial is not None and any(i.startswith("v2-") for i in a.ids)), log
    assert load.result.failed == 0, load.result.errors
    assert load.result.by_revision[cand] > 0, "the canary served the load's users too"


# ----------------------------------------------------------------- (b)


def test_b_a_missing_index_version_keeps_the_candidate_waiting_without_traffic_until_the_deadline(
    dataplane, namespace, store, embedder
):
    _, index = store
    steps = [{"canary": {"weight": 50, "duration": "30s"}}]
    manifest = rag_stack("shop", embedder=embedder, index=index, version="v1", steps=steps, progress_deadline="20s")
    stable = deploy(dataplane, namespace, manifest)
    key = dataplane.key_for(namespace)
    waiting = f"index {index} version v9 does not exist in the store: build it, or pin a version that exists"
    seen: list[dict[str, Any]] = []
    with (
        PlanRecorder(namespace, "shop") as plans,
        Load(dataplane.router_url, f"{namespace}/shop", rate=10, api_key=key) as load,
    ):
        applied = time.monotonic()
        apply(namespace, with_index(manifest, "v9"))
        cand = wait_until("candidate", lambda: status(namespace, "shop").get("candidateRevision"))
        st = wait_until("the candidate waits for its index", lambda: waiting in (s := status(namespace, "shop")).get("message", "") and s)
        waited_at = time.monotonic() - applied

        def rolled_back() -> dict[str, Any] | None:
            s = status(namespace, "shop")
            seen.append(s)
            traffic = s.get("traffic") or {}
            assert not traffic.get("candidateWeight") and not traffic.get("shadowPercent"), f"traffic to {cand}: {s.get('message')}"
            return s if s.get("phase") == "Degraded" else None

        rb = wait_until("the progress deadline", rolled_back, timeout=60)
        deadline_at = time.monotonic() - applied
    assert cand != stable
    # Its message and its Reconciling condition say why it waits, in the index check's words.
    assert st["message"] == f"waiting for revision {cand}: {waiting} (IndexMissing)", st["message"]
    assert condition(st, "Reconciling")["status"] == "True" and waiting in condition(st, "Reconciling")["message"]
    assert condition(st, "Reconciling")["reason"] == "IndexMissing"
    assert condition(st, "Ready")["status"] == "False"
    assert len(seen) > 20, "the status was watched while the candidate waited"
    # The progress deadline still applies: rolled back at 20 s, naming the cause.
    assert rb["stableRevision"] == stable and rb["rolledBackRevision"] == cand and rb.get("candidateRevision") is None
    reason = rb["rollout"]["rollbackReason"]
    assert "not ready within progressDeadline 20s" in reason and waiting in reason, reason
    assert condition(rb, "Stalled")["status"] == "True"
    assert 20 <= deadline_at < 45 and waited_at < 20, (waited_at, deadline_at)
    # No request ever reached it: no plan named it, no answer came from it, the router never searched for it.
    assert all(p[2] is None for p in plans.plans), plans.plans
    assert load.result.failed == 0 and load.result.sent > 100, load.result
    assert load.result.by_revision[cand] == 0 and load.result.by_revision[stable] > 100, load.result.by_revision
    for metric in ("inferstack_router_requests_total", "inferstack_router_retrievals_total", "inferstack_router_retrieval_errors_total"):
        assert router_value(dataplane, metric, namespace=namespace, revision=cand) == 0, metric
    assert router_value(dataplane, "inferstack_router_retrievals_total", namespace=namespace, revision=stable) > 100


# ----------------------------------------------------------------- (c)


def test_c_the_store_stopped_mid_canary_follows_each_stacks_failure_policy_and_requests_resume(
    dataplane, namespace, store, embedder
):
    pgstore, index = store
    steps = [{"canary": {"weight": 50, "duration": "10m"}}]  # no gate, a long step: nothing but the test ends it
    policies = {"fails": "Fail", "degrades": "AnswerWithoutContext"}
    systems = {name: f"{GOOD_PROMPT} This is the {name} stack." for name in policies}
    manifests = {
        name: rag_stack(name, embedder=embedder, index=index, version="v1", steps=steps, on_failure=policy, system=systems[name])
        for name, policy in policies.items()
    }  # fmt: skip
    stables = {name: deploy(dataplane, namespace, m) for name, m in manifests.items()}
    users = [f"user-{i}" for i in range(8)]
    questions = [*SLICE_QUESTIONS["shipping"], *SLICE_QUESTIONS["general"]]
    probes = {name: Probe(dataplane, namespace, name, users, questions, interval=0.3) for name in policies}
    for m in manifests.values():
        apply(namespace, with_index(m, "v2"))
    cands = {name: wait_until(f"{name}'s candidate", lambda n=name: status(namespace, n).get("candidateRevision")) for name in policies}
    for name in policies:
        wait_until(f"{name} at canary 50 %", lambda n=name: status(namespace, n).get("traffic", {}).get("candidateWeight") == 50)
    with probes["fails"], probes["degrades"]:

        def both_roles(name: str, since: float, ok) -> bool:
            answers = probes[name].since(since)
            return all(sum(1 for a in answers if a.revision == rev and ok(a)) >= 2 for rev in (stables[name], cands[name]))

        def with_documents(a: Answer) -> bool:  # each revision's own index version: v1 for the stable, v2 for the candidate
            version = "v2" if a.role == "candidate" else "v1"
            return a.status == 200 and len(a.ids) == TOP_K and all(i.startswith(f"{version}-") for i in a.ids)

        for name in policies:
            wait_until(f"{name}: both revisions answer with documents", lambda n=name: both_roles(n, 0, with_documents), timeout=30)
        pgstore.stop()
        stopped = time.monotonic()
        wait_until("answers during the outage",
                   lambda: all(both_roles(n, stopped, lambda a: a.status in (200, 503)) for n in policies), timeout=30)  # fmt: skip
        during = {name: probes[name].since(stopped) for name in policies}
        outage_stack = {name: status(namespace, name) for name in policies}
        outage_received = received(dataplane)
        restarting = time.monotonic()
        pgstore.restart()
        back = time.monotonic()
        resumed = {}
        for name in policies:
            wait_until(f"{name} resumes with documents", lambda n=name: both_roles(n, back, with_documents), timeout=60)
            resumed[name] = min(a.t1 for a in probes[name].since(back) if with_documents(a)) - back
    logs = {name: table(p.answers) for name, p in probes.items()}
    print(f"\nresumed after the restart (s): {resumed}\n" + "\n".join(f"{n}:\n{t}" for n, t in logs.items()))
    # Fail: every request served during the outage is a clear 503 retrieval_failed naming its request id; the model was not asked.
    fails = [a for a in during["fails"] if a.t1 < restarting]
    assert fails and all(a.status == 503 and a.code == "retrieval_failed" for a in fails), logs["fails"]
    assert all(a.message.startswith("retrieval failed (store_") and "the model was not asked (request id " in a.message for a in fails)
    assert {a.revision for a in fails} == {stables["fails"], cands["fails"]}
    # AnswerWithoutContext: answered, without documents (an empty header), as the model answers the plain system prompt.
    degraded = [a for a in during["degrades"] if a.t1 < restarting]
    assert degraded and all(a.status == 200 and a.retrieved == "" for a in degraded), logs["degrades"]
    assert {a.revision for a in degraded} == {stables["degrades"], cands["degrades"]}
    assert any(system_of(b) == systems["degrades"] for b in outage_received), "the model got the plain system prompt, no documents"
    assert all(system_of(b) != systems["fails"] for b in outage_received), "the Fail stack's model was never asked without documents"
    # Counted per revision, either way.
    for name, rev in ((n, r) for n in policies for r in (stables[n], cands[n])):
        labels = {"namespace": namespace, "stack": name, "revision": rev}
        errors = router_value(dataplane, "inferstack_router_retrieval_errors_total", **labels)
        failed = router_value(dataplane, "inferstack_router_errors_total", kind="retrieval", **labels)
        without = router_value(dataplane, "inferstack_router_answered_without_context_total", **labels)
        n = sum(1 for a in during[name] if a.revision == rev and a.t1 < restarting)
        assert errors >= n >= 1, (name, rev, errors, n)
        assert (failed, without) == ((errors, 0) if name == "fails" else (0, errors)), (name, rev, failed, without, errors)
    # The operator kept the canary through the outage (no gate, a ready index verdict), and the requests resumed.
    for name in policies:
        assert outage_stack[name]["candidateRevision"] == cands[name] and outage_stack[name]["traffic"]["candidateWeight"] == 50
        tail = probes[name].answers[-4:]
        assert all(with_documents(a) for a in tail), logs[name]
    assert all(t < 30 for t in resumed.values()), resumed


# ----------------------------------------------------------------- (d)

OLD_TEMPLATE = "{{ system }}\nArticles:\n{% for d in documents %}- [{{ d.id }}] {{ d.metadata.title }}: {{ d.text }}\n{% endfor %}"
NEW_TEMPLATE = '{{ system }}\n<sources>{% for d in documents %}<doc id="{{ d.id }}">{{ d.text }}</doc>{% endfor %}</sources>'


def rendered(template: str, ids: list[str]) -> str:
    """What each template renders, written out by hand (not by the router's code) for the documents ``ids``."""
    articles = {d[0]: d for d in docs("v1")}
    if template == OLD_TEMPLATE:
        return GOOD_PROMPT + "\nArticles:\n" + "".join(f"- [{i}] {articles[i][2]['title']}: {articles[i][1]}\n" for i in ids)
    return GOOD_PROMPT + "\n<sources>" + "".join(f'<doc id="{i}">{articles[i][1]}</doc>' for i in ids) + "</sources>"


def test_d_a_template_change_alone_rolls_out_as_a_new_revision_and_changes_what_the_model_receives(
    dataplane, namespace, store, embedder
):
    _, index = store
    steps = [{"canary": {"weight": 50, "duration": "20s"}}]
    manifest = rag_stack("shop", embedder=embedder, index=index, version="v1", steps=steps, template=OLD_TEMPLATE)
    stable = deploy(dataplane, namespace, manifest)
    changed = copy.deepcopy(manifest)
    changed["spec"]["prompt"]["templates"]["system"] = NEW_TEMPLATE
    key = dataplane.key_for(namespace)
    n = iter(range(1_000_000))

    def model_received(user: str) -> tuple[str, list[str], str | None]:
        """Ask once, with a question no other request has; what the model stand-in received for it."""
        question = f"Do you ship to Canada? (probe {next(n)})"
        code, headers, _ = ask(dataplane, key, namespace, "shop", user, question)
        assert code == 200, headers
        body = next(b for b in reversed(received(dataplane)) if user_of(b) == question)
        return headers["x-inferstack-revision"], headers["x-inferstack-retrieved"].split(","), system_of(body)

    rev, ids, system = model_received("user-0")
    assert rev == stable and ids[0] == "v1-canada" and system == rendered(OLD_TEMPLATE, ids), system
    with PlanRecorder(namespace, "shop") as plans:
        apply(namespace, changed)
        cand = wait_until("candidate", lambda: status(namespace, "shop").get("candidateRevision"))
        plan_in_force(dataplane, plans, namespace, "shop", (stable, cand, 50, 0))
        by_revision: dict[str, str | None] = {}
        for i in range(40):
            rev, ids, system = model_received(f"user-{i}")
            assert system == rendered(NEW_TEMPLATE if rev == cand else OLD_TEMPLATE, ids), (rev, system)
            by_revision.setdefault(rev, system)
            if len(by_revision) == 2:
                break
        assert set(by_revision) == {stable, cand}, by_revision
        wait_until("promotion", lambda: (s := status(namespace, "shop")).get("stableRevision") == cand and s.get("phase") == "Healthy",
                   timeout=90)  # fmt: skip
        plan_in_force(dataplane, plans, namespace, "shop", (cand, None, 0, 0))
    # A new revision that differs from the stable one in the template only.
    parts = {r: kget("controllerrevision", f"shop-{r}", namespace)["data"] for r in (stable, cand)}
    old, new = (json.dumps(parts[r], sort_keys=True) for r in (stable, cand))
    assert cand != stable and old != new
    spec_old, spec_new = (next(v for k, v in parts[r].items() if k != "hash") for r in (stable, cand))
    assert spec_new["prompt"]["templates"] == {"system": NEW_TEMPLATE} and spec_old["prompt"]["templates"] == {"system": OLD_TEMPLATE}
    spec_new["prompt"]["templates"] = spec_old["prompt"]["templates"]
    assert spec_new == spec_old, "only the template differs"
    assert [p[1:] for p in plans.plans] == [(stable, None, 0, 0), (stable, cand, 50, 0), (cand, None, 0, 0)], plans.plans
    # Promoted: every user's request now reaches the model in the new template, with the same documents.
    for i in range(6):
        rev, ids, system = model_received(f"user-{i}")
        assert rev == cand and ids[0] == "v1-canada" and system == rendered(NEW_TEMPLATE, ids), system
