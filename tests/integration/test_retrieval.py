"""Retrieval served by the router, against a real PostgreSQL with pgvector and the stand-in's embeddings.

Index v1 and v2 hold different articles. Each revision's bundle pins one of
them, so the ids in ``x-inferstack-retrieved`` and the system message the
model server received say which index version served a request, for the
stable, canary and shadow paths and after a rollback.
"""

from __future__ import annotations

import copy
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .harness import Proc, Processes, plan, wait_until, write_plan
from .pgstore import PgServer

pytestmark = pytest.mark.timeout(120)

DIM = 256
INDEX = "support-articles"
V1 = [
    ("kb-refund-1", "Refunds are paid back to the original card within 5 days.", {"title": "Refunds"}),
    ("kb-ship-1", "Shipping to Canada takes 5 to 8 working days.", {"title": "Shipping"}),
    ("kb-login-1", "Reset your password from the login page.", {"title": "Login"}),
]
V2 = [
    ("kb-refund-2", "Refunds need a manager approval and are paid back within 30 days.", {"title": "Refunds (new)"}),
    ("kb-ship-2", "Shipping to Canada is suspended this month.", {"title": "Shipping (new)"}),
    ("kb-login-2", "Passwords are reset by the help desk only.", {"title": "Login (new)"}),
]
QUESTION = "How long until refunds are paid back?"
HOSTILE = 'x"; DROP TABLE "support-articles__v1"; --'


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    server = PgServer().start()
    server.create_index(f"{INDEX}__v1", DIM, V1)
    server.create_index(f"{INDEX}__v2", DIM, V2)
    server.create_index('we"ird__v1', DIM, V1[:1])  # a quoted name that exists: quoting must find it
    yield server
    server.cleanup()


@pytest.fixture
def embedder(procs: Processes) -> Proc:
    return procs.standin("bge", "--embedding-dimension", str(DIM))


def retrieval(embedder: Proc, dsn: str, version: str, **fields: Any) -> dict[str, Any]:
    return {"embeddingUrl": embedder.url, "embeddingModel": "bge", "dimension": DIM, "index": INDEX,
            "indexVersion": version, "topK": 2, "storeSecretRef": {"name": "support-store", "key": "dsn"},
            "storeDsn": dsn, **fields}  # fmt: skip


def rag_plan(stable: Proc, candidate: Proc | None, embedder: Proc, dsn: str, serial: int = 1,
             stable_retrieval: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    data = plan(stable, candidate, serial=serial, **fields)
    data["stable"]["retrieval"] = stable_retrieval or retrieval(embedder, dsn, "v1")
    if candidate is not None:
        data["candidate"]["retrieval"] = retrieval(embedder, dsn, "v2")
    return data


def received(backend: Proc) -> list[dict[str, Any]]:
    with urllib.request.urlopen(backend.url + "/debug/received", timeout=5) as r:
        return json.loads(r.read())


def system_of(body: dict[str, Any]) -> str:
    return body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""


def metric(router: Proc, name: str, **labels: str) -> float:
    with urllib.request.urlopen(router.metrics_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def ask(router: Proc, user: str = "user-1", content: str = QUESTION) -> tuple[int, dict[str, str], dict[str, Any]]:
    body = {"model": "support", "messages": [{"role": "user", "content": content}]}
    async with (
        aiohttp.ClientSession(headers=router.auth) as session,
        session.post(router.url + "/v1/chat/completions", json=body, headers={"x-user-id": user}) as resp,
    ):
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.json()


async def test_each_revision_searches_its_own_index_version_and_a_rollback_restores_v1(
    procs: Processes, backends: tuple[Proc, Proc], embedder: Proc, pg: PgServer, tmp_path: Path
) -> None:
    stable, candidate = backends
    path = tmp_path / "plan.json"
    write_plan(path, rag_plan(stable, candidate, embedder, pg.dsn, candidateWeight=50))
    router = procs.router(path)
    by_role: dict[str, tuple[str, str]] = {}
    for i in range(40):
        status, headers, _ = await ask(router, f"user-{i}")
        assert status == 200
        by_role.setdefault(headers["x-inferstack-role"], (f"user-{i}", headers["x-inferstack-retrieved"]))
        if len(by_role) == 2:
            break
    assert set(by_role) == {"stable", "candidate"}
    # Nearest first: the refund article of each revision's own index version, and only that version's ids.
    assert by_role["stable"][1].split(",")[0] == "kb-refund-1" and all(i.endswith("-1") for i in by_role["stable"][1].split(","))
    assert by_role["candidate"][1].split(",")[0] == "kb-refund-2" and all(i.endswith("-2") for i in by_role["candidate"][1].split(","))
    assert len(by_role["stable"][1].split(",")) == 2  # topK
    # What each model server received: its own revision's documents in the system message, after the system prompt.
    a, b = system_of(received(stable)[-1]), system_of(received(candidate)[-1])
    assert a.startswith("You are the support assistant.") and "[kb-refund-1] Refunds are paid back to the original card" in a
    assert "kb-refund-2" not in a and "[kb-refund-2] Refunds need a manager approval" in b and "kb-refund-1" not in b

    # Rollback: one plan write, and the candidate's user gets v1's documents from the stable revision again.
    write_plan(path, rag_plan(stable, None, embedder, pg.dsn, serial=2))
    user = by_role["candidate"][0]

    async def rolled_back() -> tuple[str, str]:
        _, headers, _ = await ask(router, user)
        return headers["x-inferstack-revision"], headers["x-inferstack-retrieved"]

    deadline = time.monotonic() + 10
    while (now := await rolled_back())[0] != "rev-a":
        assert time.monotonic() < deadline, "router did not pick up the rollback"
    assert now[1].split(",")[0] == "kb-refund-1"
    assert metric(router, "inferstack_router_retrieved_documents_total", revision="rev-b", role="candidate") >= 2
    assert metric(router, "inferstack_router_retrievals_total", revision="rev-a", role="stable") >= 2
    assert metric(router, "inferstack_router_retrieval_duration_seconds_count", revision="rev-a", slice="default") >= 2


async def test_shadow_copies_search_the_candidates_index(
    procs: Processes, backends: tuple[Proc, Proc], embedder: Proc, pg: PgServer, tmp_path: Path
) -> None:
    stable, candidate = backends
    path = tmp_path / "plan.json"
    write_plan(path, rag_plan(stable, candidate, embedder, pg.dsn, shadowPercent=100))
    router = procs.router(path)
    status, headers, _ = await ask(router, content="Do you ship to Canada?")
    assert status == 200 and headers["x-inferstack-role"] == "stable" and headers["x-inferstack-retrieved"].startswith("kb-ship-1")
    wait_until("shadow copy at the candidate", lambda: any("kb-ship-2" in system_of(b) for b in received(candidate)))
    assert all("kb-ship-1" not in system_of(b) for b in received(candidate))
    wait_until("shadow retrieval counted",
               lambda: metric(router, "inferstack_router_retrievals_total", revision="rev-b", role="shadow") >= 1)


async def test_rules_and_judges_score_each_answer_on_its_own_revisions_documents(
    procs: Processes, backends: tuple[Proc, Proc], embedder: Proc, pg: PgServer, tmp_path: Path
) -> None:
    """citesRetrieved and a judge, on the stable answer (index v1) and the shadow answer (index v2) of one request."""
    stable, candidate = backends
    judge = procs.standin("judge", "--judge")
    evaluation = {"evaluators": [
        {"name": "cites", "rule": {"citesRetrieved": {}}},
        {"name": "grounded", "judge": {"endpoint": {"url": judge.url + "/v1", "model": "judge"},
                                       "criteria": "Supported by the retrieved documents.", "sampleRate": 1.0}},
    ]}  # fmt: skip
    path = tmp_path / "plan.json"
    write_plan(path, rag_plan(stable, candidate, embedder, pg.dsn, shadowPercent=100, evaluation=evaluation))
    router = procs.router(path)
    status, headers, _ = await ask(router, content="Do you ship to Canada?")
    assert status == 200 and headers["x-inferstack-retrieved"].startswith("kb-ship-1")
    wait_until("both answers judged", lambda: len(received(judge)) == 2)
    prompts = [b["messages"][1]["content"] for b in received(judge)]
    seen = sorted(p[p.index("[The Start of Retrieved Documents]"):p.index("[The End of Retrieved Documents]")] for p in prompts)
    assert "[kb-ship-1] Shipping to Canada takes 5 to 8 working days." in seen[0] and "kb-ship-2" not in seen[0]
    assert "[kb-ship-2] Shipping to Canada is suspended this month." in seen[1] and "kb-ship-1" not in seen[1]
    # The stand-in model cites nothing: each answer is one sample, a failing one, under its own role.
    for role, revision in (("stable", "rev-a"), ("shadow", "rev-b")):
        labels = {"revision": revision, "role": role, "evaluator": "cites"}
        wait_until(f"{role} answer scored", lambda labels=labels: metric(router, "inferstack_eval_samples_total", **labels) == 1)
        assert metric(router, "inferstack_eval_score_sum_total", **labels) == 0


@pytest.mark.parametrize("policy", ["Fail", "AnswerWithoutContext"])
async def test_a_missing_index_version_follows_the_failure_policy(
    procs: Processes, backends: tuple[Proc, Proc], embedder: Proc, pg: PgServer, tmp_path: Path, policy: str
) -> None:
    stable, _ = backends
    path = tmp_path / "plan.json"
    missing = retrieval(embedder, pg.dsn, "v9", onFailure=policy)
    write_plan(path, rag_plan(stable, None, embedder, pg.dsn, stable_retrieval=missing))
    router = procs.router(path)
    status, headers, body = await ask(router)
    assert metric(router, "inferstack_router_retrieval_errors_total", revision="rev-a", kind="index_missing") == 1
    if policy == "Fail":
        assert status == 503 and body["error"]["code"] == "retrieval_failed" and body["error"]["type"] == "service_unavailable"
        assert "index_missing" in body["error"]["message"] and headers["x-request-id"] in body["error"]["message"]
        assert metric(router, "inferstack_router_errors_total", revision="rev-a", kind="retrieval") == 1
        assert all(QUESTION not in json.dumps(b) for b in received(stable))  # the model was not asked
    else:
        assert status == 200 and headers["x-inferstack-retrieved"] == ""
        assert system_of(received(stable)[-1]) == "You are the support assistant."  # no documents, the plain system prompt
        assert metric(router, "inferstack_router_answered_without_context_total", revision="rev-a") == 1


async def test_hostile_index_names_are_identifiers_never_sql(
    procs: Processes, backends: tuple[Proc, Proc], embedder: Proc, pg: PgServer, tmp_path: Path
) -> None:
    stable, _ = backends
    path = tmp_path / "plan.json"
    hostile = {**retrieval(embedder, pg.dsn, "v1"), "index": HOSTILE}
    write_plan(path, rag_plan(stable, None, embedder, pg.dsn, stable_retrieval=hostile))
    router = procs.router(path)
    status, _, body = await ask(router)
    assert status == 503 and "index_missing" in body["error"]["message"]
    assert pg.sql(f'SELECT count(*) FROM "{INDEX}__v1"')[0][0] == len(V1)  # nothing was dropped
    # A name with a quote in it that does exist is found: quoted, not stripped.
    weird = {**retrieval(embedder, pg.dsn, "v1"), "index": 'we"ird'}
    write_plan(path, rag_plan(stable, None, embedder, pg.dsn, serial=2, stable_retrieval=weird))
    deadline = time.monotonic() + 10
    while (answer := await ask(router))[0] != 200:
        assert time.monotonic() < deadline, answer
    assert answer[1]["x-inferstack-retrieved"] == "kb-refund-1"


async def test_a_store_stopped_mid_canary_follows_the_failure_policy_then_requests_resume_and_its_dsn_never_leaks(
    procs: Processes, backends: tuple[Proc, Proc], embedder: Proc, tmp_path: Path
) -> None:
    stable, candidate = backends
    store = PgServer().start()
    try:
        store.create_index(f"{INDEX}__v1", DIM, V1)
        store.create_index(f"{INDEX}__v2", DIM, V2)
        path = tmp_path / "plan.json"
        data = rag_plan(stable, candidate, embedder, store.dsn, candidateWeight=100)
        data["candidate"]["retrieval"]["onFailure"] = "AnswerWithoutContext"
        write_plan(path, data)
        router = procs.router(path)
        status, headers, _ = await ask(router)
        assert status == 200 and headers["x-inferstack-retrieved"].startswith("kb-refund-2")
        store.stop()
        status, headers, _ = await ask(router)
        # The candidate answers without context, as its policy says; the stable revision would refuse.
        assert status == 200 and headers["x-inferstack-retrieved"] == ""
        assert metric(router, "inferstack_router_answered_without_context_total", revision="rev-b") == 1
        write_plan(path, {**copy.deepcopy(data), "serial": 2, "candidateWeight": 0})
        deadline = time.monotonic() + 10
        while (answer := await ask(router))[0] != 503:
            assert time.monotonic() < deadline, answer
        assert answer[2]["error"]["code"] == "retrieval_failed"
        refused = answer
        assert metric(router, "inferstack_router_retrieval_errors_total", revision="rev-a", kind="store_unreachable") >= 1
        # The store is back (the same server, tables and DSN): with no router restart and no plan change, the
        # very next request gets v1's documents again (the pool drops the connections the stop closed, opens a new one)...
        store.restart()
        failed = metric(router, "inferstack_router_retrieval_errors_total")
        answer = await ask(router)
        assert answer[0] == 200, answer
        assert answer[1]["x-inferstack-role"] == "stable" and answer[1]["x-inferstack-retrieved"].startswith("kb-refund-1")
        assert metric(router, "inferstack_router_retrieval_errors_total") == failed
        # ...and the canary, given its traffic back, gets v2's documents with context again.
        without_context = metric(router, "inferstack_router_answered_without_context_total", revision="rev-b")
        write_plan(path, {**copy.deepcopy(data), "serial": 3})
        deadline = time.monotonic() + 10
        while (answer := await ask(router))[1]["x-inferstack-role"] != "candidate":
            assert time.monotonic() < deadline, answer
        assert answer[0] == 200 and answer[1]["x-inferstack-retrieved"].startswith("kb-refund-2")
        assert metric(router, "inferstack_router_answered_without_context_total", revision="rev-b") == without_context
    finally:
        store.cleanup()
    log = next(procs.logs.glob("router-*.log")).read_text()
    assert "retrieval from support-articles__v1 failed: store_unreachable" in log  # the failure is logged...
    assert store.password not in log and store.password not in json.dumps(refused[2])  # ...but never the password


async def test_a_streamed_answer_carries_the_retrieved_ids_and_a_stack_without_store_none(
    procs: Processes, backends: tuple[Proc, Proc], embedder: Proc, pg: PgServer, tmp_path: Path
) -> None:
    stable, _ = backends
    rag, plain = tmp_path / "rag.json", tmp_path / "plain.json"
    write_plan(rag, rag_plan(stable, None, embedder, pg.dsn))
    router = procs.router(rag)
    body = {"model": "support", "stream": True, "messages": [{"role": "user", "content": "Do you ship to Canada?"}]}
    async with (
        aiohttp.ClientSession(headers=router.auth) as session,
        session.post(router.url + "/v1/chat/completions", json=body) as resp,
    ):
        text = await resp.text()
        assert resp.status == 200 and "[DONE]" in text and resp.headers["x-inferstack-retrieved"].startswith("kb-ship-1")
    assert "[kb-ship-1] Shipping to Canada" in system_of(received(stable)[-1])
    # The same stack without a retriever: the plain path, no header, the system prompt as it is.
    write_plan(plain, plan(stable, None))
    other = procs.router(plain)
    status, headers, _ = await ask(other)
    assert status == 200 and "x-inferstack-retrieved" not in headers
    assert system_of(received(stable)[-1]) == "You are the support assistant."
