"""What the model receives: retrieval, the revision's template and the failure policy (router/augment.py)."""

from __future__ import annotations

from typing import Any

import pytest

from inferstack.core.retrieval import Document
from inferstack.core.trafficplan import RetrievalPlan, RevisionBundle, SecretRef
from inferstack.router.augment import Refusal, compile_prompts, prepare
from inferstack.router.bundle import apply_bundle
from inferstack.router.metrics import Labels, RouterMetrics
from inferstack.router.retrieval import RetrievalFailed

LABELS = Labels("team-a", "support", "rev-a", "stable", "billing")
BODY = {"model": "support", "messages": [{"role": "system", "content": "client's own"}, {"role": "user", "content": "refund?"}]}
DOCS = [Document("kb-1", "Refunds take 5 days.", 0.9), Document("kb-2", "Shipping is free.", 0.5)]


def retrieval(**fields: Any) -> RetrievalPlan:
    return RetrievalPlan(embedding_url="http://embed", embedding_model="bge", dimension=8, index="docs", index_version="v1",
                         top_k=2, store_secret_ref=SecretRef(name="s", key="dsn"), store_dsn="postgresql://u:pw@db/x", **fields)


def bundle(**fields: Any) -> RevisionBundle:
    return RevisionBundle(revision="rev-a", url="http://model", served_model="m", cache_namespace="c", system_prompt="Be brief.", **fields)


class FakeRetriever:
    def __init__(self, documents: list[Document] | None = None, fail: str | None = None) -> None:
        self.documents, self.fail, self.queries = documents or [], fail, []

    async def retrieve(self, session: Any, plan: RetrievalPlan, query: str, request_id: str) -> list[Document]:
        self.queries.append(query)
        if self.fail:
            raise RetrievalFailed(self.fail, f"connect to {plan.store_dsn} failed")
        return self.documents


async def run(b: RevisionBundle, retriever: FakeRetriever, metrics: RouterMetrics, body: dict = BODY, chat: bool = True):
    return await prepare(None, retriever, metrics, compile_prompts(b), b, body, "tenant", LABELS, "req-1", chat=chat)  # type: ignore[arg-type]


def value(metrics: RouterMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {**LABELS._asdict(), **labels}) or 0.0


async def test_a_revision_without_retriever_or_template_takes_the_plain_path() -> None:
    b, metrics = bundle(), RouterMetrics()
    assert compile_prompts(b) is None
    prepared = await run(b, FakeRetriever(DOCS), metrics)
    assert prepared.retrieved is None
    assert prepared.body["messages"] == apply_bundle(BODY, b, "tenant", chat=True)["messages"]


async def test_retrieved_documents_reach_the_system_message_and_the_header() -> None:
    b, metrics, retriever = bundle(retrieval=retrieval()), RouterMetrics(), FakeRetriever(DOCS)
    prepared = await run(b, retriever, metrics)
    assert retriever.queries == ["refund?"]
    assert prepared.retrieved == "kb-1,kb-2" and prepared.document_ids == ("kb-1", "kb-2")
    system, user = prepared.body["messages"]
    assert system == {"role": "system", "content": "Be brief.\n\nRetrieved documents:\n[kb-1] Refunds take 5 days.\n[kb-2] Shipping is free."}
    assert user == {"role": "user", "content": "refund?"}  # the client's system message is the stack's to replace
    assert value(metrics, "inferstack_router_retrieved_documents_total") == 2
    assert value(metrics, "inferstack_router_retrievals_empty_total") == 0
    assert value(metrics, "inferstack_router_retrieval_duration_seconds_count") == 1


async def test_the_revisions_templates_shape_the_query_and_the_system_message() -> None:
    b = bundle(retrieval=retrieval(query_template="billing: {{ messages[-1].content }}"),
               system_template="{{ system }} Sources: {{ documents | map(attribute='id') | join(' ') }}. Tools: {{ tools | length }}",
               tools=[{"type": "function", "function": {"name": "lookup"}}])
    retriever = FakeRetriever(DOCS[:1])
    prepared = await run(b, retriever, RouterMetrics())
    assert retriever.queries == ["billing: refund?"]
    assert prepared.body["messages"][0]["content"] == "Be brief. Sources: kb-1. Tools: 1"


async def test_a_template_alone_changes_what_the_model_receives_with_no_retrieval() -> None:
    prepared = await run(bundle(system_template="{{ system }} ({{ messages | length }} turns)"), FakeRetriever(), RouterMetrics())
    assert prepared.body["messages"][0]["content"] == "Be brief. (1 turns)" and prepared.retrieved is None


async def test_fail_is_a_503_naming_the_request_and_counted() -> None:
    metrics = RouterMetrics()
    with pytest.raises(Refusal) as refused:
        await run(bundle(retrieval=retrieval()), FakeRetriever(fail="store_unreachable"), metrics)
    assert refused.value.status == 503 and refused.value.code == "retrieval_failed"
    assert "store_unreachable" in refused.value.message and "req-1" in refused.value.message and "pw" not in refused.value.message
    assert value(metrics, "inferstack_router_retrieval_errors_total", kind="store_unreachable") == 1
    assert value(metrics, "inferstack_router_errors_total", kind="retrieval") == 1


async def test_answer_without_context_sends_the_plain_system_prompt_and_counts_it() -> None:
    metrics = RouterMetrics()
    prepared = await run(bundle(retrieval=retrieval(on_failure="AnswerWithoutContext")), FakeRetriever(fail="timeout"), metrics)
    assert prepared.body["messages"][0]["content"] == "Be brief." and prepared.retrieved == ""
    assert value(metrics, "inferstack_router_answered_without_context_total") == 1
    assert value(metrics, "inferstack_router_retrieval_errors_total", kind="timeout") == 1
    assert value(metrics, "inferstack_router_errors_total", kind="retrieval") == 0


async def test_no_user_text_searches_nothing() -> None:
    retriever = FakeRetriever(DOCS)
    body = {"model": "support", "messages": [{"role": "assistant", "content": "Hello!"}]}
    prepared = await run(bundle(retrieval=retrieval()), retriever, RouterMetrics(), body)
    assert retriever.queries == [] and prepared.retrieved == ""


async def test_completions_carry_a_raw_prompt_and_take_the_plain_path() -> None:
    retriever = FakeRetriever(DOCS)
    prepared = await run(bundle(retrieval=retrieval()), retriever, RouterMetrics(), {"model": "support", "prompt": "refund?"}, chat=False)
    assert retriever.queries == [] and prepared.retrieved is None and prepared.body["prompt"] == "refund?"


@pytest.mark.parametrize(
    "template,message",
    [
        ("{% for %}", "template prompt.templates.system does not compile: line 1"),
        ("{{ documents.__class__ }}", "template prompt.templates.system is not allowed to do that"),
        ("{{ 1 // 0 }}", "template prompt.templates.system failed: ZeroDivisionError"),
    ],
)
async def test_a_template_error_is_a_clear_json_error_never_a_traceback(template: str, message: str) -> None:
    metrics = RouterMetrics()
    with pytest.raises(Refusal) as refused:
        await run(bundle(system_template=template), FakeRetriever(), metrics)
    assert refused.value.status == 500 and refused.value.code == "template_error"
    assert refused.value.message.startswith(message) and "req-1" in refused.value.message and "Traceback" not in refused.value.message
    assert value(metrics, "inferstack_router_errors_total", kind="template") == 1
