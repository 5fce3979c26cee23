"""The router applies the stack's declared slices and evaluators: one metric shape, labels from the spec only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from inferstack.core import judging
from inferstack.core.retrieval import Document
from inferstack.core.trafficplan import RetrievalPlan, TrafficPlan
from inferstack.router.app import ROUTER
from inferstack.router.retrieval import RetrievalFailed
from inferstack.standin.app import RECEIVED as STANDIN_RECEIVED
from inferstack.standin.app import StandinSettings
from inferstack.standin.app import build_app as build_standin

REFUND = {"model": "support", "messages": [{"role": "user", "content": "How do I get a refund?"}]}
EVALUATION = {
    "sliceHeader": "x-team-slice",
    "slices": ["billing", "shipping"],
    "evaluators": [
        {"name": "no-refusal", "rule": {"refusal": {}}},
        {"name": "mentions-days", "rule": {"mustMatch": "(?i)days"}},
        {"name": "json", "rule": {"json": {}}},
    ],
}


def sample(client, name: str, **labels: str) -> float:
    return client.app[ROUTER].metrics.registry.get_sample_value(name, labels) or 0.0


def series(client, name: str) -> list[dict[str, str]]:
    return [s.labels for m in client.app[ROUTER].metrics.registry.collect() for s in m.samples if s.name == name]


async def test_declared_slices_and_evaluators_give_count_sum_and_squares(make_plan, router_client) -> None:
    plan = make_plan(
        candidate_weight=0,
        evaluation=EVALUATION,
        stable_extra={"systemPrompt": "You are the support assistant. Never discuss refunds."},
    )
    client = await router_client(plan)
    for slice_header in ("billing", "billing", "junk-1", "junk-2", None):
        headers = {"x-user-id": "u"} | ({"x-team-slice": slice_header} if slice_header else {})
        assert (await client.post("/v1/chat/completions", json=REFUND, headers=headers)).status == 200
    base = {"namespace": "team-a", "stack": "support", "revision": "rev-a", "role": "stable"}
    billing = {**base, "slice": "billing", "evaluator": "no-refusal"}
    assert sample(client, "inferstack_eval_samples_total", **billing) == 2
    assert sample(client, "inferstack_eval_score_sum_total", **billing) == 0  # the stand-in refuses refunds
    assert sample(client, "inferstack_eval_score_squares_sum_total", **billing) == 0
    # undeclared and missing slices are "other": no label value a client chose
    assert sample(client, "inferstack_eval_samples_total", **{**billing, "slice": "other"}) == 3
    assert {s["slice"] for s in series(client, "inferstack_eval_samples_total")} == {"billing", "other"}
    # json applies only when JSON was asked for: no sample, no series
    assert not [s for s in series(client, "inferstack_eval_samples_total") if s["evaluator"] == "json"]
    assert sample(client, "inferstack_eval_samples_total", **{**billing, "evaluator": "mentions-days"}) == 2


async def test_a_shadow_answer_is_scored_like_a_client_answer(make_plan, router_client) -> None:
    plan = make_plan(shadow_percent=100, evaluation=EVALUATION)
    client = await router_client(plan)
    resp = await client.post("/v1/chat/completions", json=REFUND, headers={"x-user-id": "u", "x-team-slice": "billing"})
    assert resp.status == 200
    labels = {"namespace": "team-a", "stack": "support", "revision": "rev-b", "role": "shadow", "slice": "billing", "evaluator": "no-refusal"}
    for _ in range(200):  # the mirror runs in the background: poll with a deadline
        if sample(client, "inferstack_eval_samples_total", **labels):
            break
        await asyncio.sleep(0.01)
    assert sample(client, "inferstack_eval_samples_total", **labels) == 1


# ------------------------------------------------------- citesRetrieved: each answer's own documents

CITED = "Refunds take 5 days [kb-1]."  # what the model answers, whatever it was given


def citing_model() -> web.Application:
    """A model server that always cites kb-1 (a chat completion, or its SSE stream); RECEIVED keeps the bodies."""
    app = web.Application()
    app[RECEIVED] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        app[RECEIVED].append(body)
        base = {"id": "chatcmpl-1", "model": body["model"], "created": 0}
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": CITED}, "finish_reason": "stop"}]})
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for piece in (CITED[:10], CITED[10:]):
            chunk = {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}}]}
            await out.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await out.write(b"data: [DONE]\n\n")
        return out

    app.router.add_post("/v1/chat/completions", chat)
    return app


RECEIVED: web.AppKey[list[dict[str, Any]]] = web.AppKey("received", list)


class IndexedRetriever:
    """The router's Retriever for tests: documents by index version (v1: kb-1, v2: kb-2); ``fail``: every
    retrieval fails with that kind. test_tracing.py uses it too."""

    DOCUMENTS = {"v1": [Document("kb-1", "Refunds take 5 days.", 0.9)], "v2": [Document("kb-2", "Refunds take 90 days.", 0.9)]}

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.versions: list[str] = []

    async def retrieve(self, session: Any, plan: RetrievalPlan, query: str, request_id: str) -> list[Document]:
        self.versions.append(plan.index_version)
        if self.fail:
            raise RetrievalFailed(self.fail, "the store did not answer")
        return list(self.DOCUMENTS.get(plan.index_version, []))

    def keep_only(self, dsns: set[str]) -> None:
        pass

    async def close(self) -> None:
        pass


def retrieval(version: str) -> dict[str, Any]:
    return {"embeddingUrl": "http://embed", "embeddingModel": "bge", "dimension": 8, "index": "kb", "indexVersion": version,
            "topK": 2, "storeSecretRef": {"name": "store", "key": "dsn"}, "storeDsn": "postgresql://u@db/x"}


CITES = {"sliceHeader": "x-team-slice", "slices": ["billing"], "evaluators": [{"name": "cites", "rule": {"citesRetrieved": {}}}]}


@pytest.fixture
async def citing_server() -> AsyncIterator[TestServer]:
    async with TestServer(citing_model()) as server:
        yield server


def rag_plan(citing: TestServer, *, stable_version: str | None = "v1", candidate_version: str | None = "v2",
             evaluation: dict[str, Any] = CITES, **fields: Any) -> TrafficPlan:
    """Both revisions served by the citing model; each retrieves from its own index version (None: no retriever)."""
    def bundle(rev: str, version: str | None) -> dict[str, Any]:
        return {"revision": rev, "url": str(citing.make_url("")), "servedModel": "m", "cacheNamespace": f"team-a.support.{rev}",
                "promptHash": f"hash-{rev}", "systemPrompt": "Cite your sources.",
                **({"retrieval": retrieval(version)} if version else {})}
    return TrafficPlan.model_validate({"stack": "support", "namespace": "team-a", "serial": 1, "evaluation": evaluation,
                                       "stable": bundle("rev-a", stable_version), "candidate": bundle("rev-b", candidate_version),
                                       **fields})


async def serve_rag(router_client, plan: TrafficPlan) -> tuple[Any, IndexedRetriever]:
    client = await router_client(plan)
    retriever = IndexedRetriever()
    client.app[ROUTER].retriever = retriever
    return client, retriever


def cites(client, revision: str, role: str) -> tuple[float, float]:
    labels = {"namespace": "team-a", "stack": "support", "revision": revision, "role": role, "slice": "billing", "evaluator": "cites"}
    return sample(client, "inferstack_eval_samples_total", **labels), sample(client, "inferstack_eval_score_sum_total", **labels)


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_citing_its_own_documents_passes_and_one_citing_anothers_fails(router_client, citing_server, stream) -> None:
    """The same answer, "[kb-1]", passes on stable (its index v1 gave kb-1) and fails on the candidate (v2 gave kb-2)."""
    client, retriever = await serve_rag(router_client, rag_plan(citing_server, candidateWeight=0))
    body = {**REFUND, "stream": stream}
    for _ in range(2):
        resp = await client.post("/v1/chat/completions", json=body, headers={"x-user-id": "u", "x-team-slice": "billing"})
        assert resp.status == 200 and resp.headers["x-inferstack-retrieved"] == "kb-1"
        await resp.read()
    assert cites(client, "rev-a", "stable") == (2, 2)

    canary = rag_plan(citing_server, candidateWeight=100, serial=2)
    client, retriever = await serve_rag(router_client, canary)
    resp = await client.post("/v1/chat/completions", json=body, headers={"x-user-id": "u", "x-team-slice": "billing"})
    assert resp.status == 200 and resp.headers["x-inferstack-retrieved"] == "kb-2"
    await resp.read()
    assert retriever.versions == ["v2"]
    assert cites(client, "rev-b", "candidate") == (1, 0)


async def test_a_shadow_answer_is_scored_on_the_candidates_own_documents(router_client, citing_server) -> None:
    client, retriever = await serve_rag(router_client, rag_plan(citing_server, candidateWeight=0, shadowPercent=100))
    resp = await client.post("/v1/chat/completions", json=REFUND, headers={"x-user-id": "u", "x-team-slice": "billing"})
    assert resp.status == 200 and resp.headers["x-inferstack-retrieved"] == "kb-1"
    for _ in range(200):  # the mirror runs in the background: poll with a deadline
        if cites(client, "rev-b", "shadow")[0]:
            break
        await asyncio.sleep(0.01)
    assert sorted(retriever.versions) == ["v1", "v2"]
    assert cites(client, "rev-a", "stable") == (1, 1)
    assert cites(client, "rev-b", "shadow") == (1, 0)  # "[kb-1]" is not what v2 gave the candidate


async def test_no_sample_when_nothing_was_retrieved(router_client, citing_server) -> None:
    """A revision without a retriever, and a request with no user text (nothing searched), give no sample."""
    client, retriever = await serve_rag(router_client, rag_plan(citing_server, stable_version=None, candidateWeight=0))
    resp = await client.post("/v1/chat/completions", json=REFUND, headers={"x-user-id": "u", "x-team-slice": "billing"})
    assert resp.status == 200 and "x-inferstack-retrieved" not in resp.headers
    client, retriever = await serve_rag(router_client, rag_plan(citing_server, candidateWeight=0, serial=2))
    no_question = {"model": "support", "messages": [{"role": "assistant", "content": "Hello!"}]}
    resp = await client.post("/v1/chat/completions", json=no_question, headers={"x-user-id": "u", "x-team-slice": "billing"})
    assert resp.status == 200 and resp.headers["x-inferstack-retrieved"] == ""
    assert retriever.versions == []
    assert cites(client, "rev-a", "stable") == (0, 0)


async def test_the_judge_sees_the_documents_each_answer_was_given(router_client, citing_server) -> None:
    """Client-facing and shadow answers reach a rubric judge with their own revision's documents."""
    async with TestServer(build_standin(StandinSettings(served_model="judge", judge=True))) as judge:
        grounded = {"name": "grounded", "judge": {"endpoint": {"url": str(judge.make_url("/v1")), "model": "judge"},
                                                  "criteria": "Supported by the retrieved documents.", "sampleRate": 1.0}}
        plan = rag_plan(citing_server, candidateWeight=0, shadowPercent=100, evaluation={**CITES, "evaluators": [grounded]})
        client, _ = await serve_rag(router_client, plan)
        resp = await client.post("/v1/chat/completions", json=REFUND, headers={"x-user-id": "u", "x-team-slice": "billing"})
        assert resp.status == 200
        for _ in range(300):  # the mirror and the judge run in the background: poll with a deadline
            if len(judge.app[STANDIN_RECEIVED]) == 2:
                break
            await asyncio.sleep(0.01)
        prompts = [m["messages"][1]["content"] for m in judge.app[STANDIN_RECEIVED]]
        assert sorted(judging.read_section(p, judging.DOCUMENTS) or "" for p in prompts) == [
            "[kb-1] Refunds take 5 days.", "[kb-2] Refunds take 90 days."]
        assert all(judging.read_section(p, judging.ANSWER) == CITED for p in prompts)


async def test_an_answer_with_a_lone_surrogate_is_served_and_scored(router_client) -> None:
    """JSON allows "\ud800" alone; it decodes to a str RE2 cannot encode. The rules must not turn it into a 500."""
    async def chat(request: web.Request) -> web.Response:
        return web.Response(body=b'{"id": "c", "choices": [{"index": 0, "finish_reason": "stop", "message": '
                                 b'{"role": "assistant", "content": "odd \\ud800 answer: 5 days"}}]}', content_type="application/json")

    model = web.Application()
    model.router.add_post("/v1/chat/completions", chat)
    async with TestServer(model) as server:
        stable = {"revision": "rev-a", "url": str(server.make_url("")), "servedModel": "m", "cacheNamespace": "c"}
        plan = TrafficPlan.model_validate({"stack": "support", "namespace": "team-a", "serial": 1, "stable": stable,
                                           "evaluation": EVALUATION})
        client = await router_client(plan)
        resp = await client.post("/v1/chat/completions", json=REFUND, headers={"x-team-slice": "billing"})
        assert resp.status == 200 and "\\ud800" in await resp.text()
        labels = {"namespace": "team-a", "stack": "support", "revision": "rev-a", "role": "stable", "slice": "billing"}
        assert sample(client, "inferstack_eval_score_sum_total", **labels, evaluator="mentions-days") == 1
