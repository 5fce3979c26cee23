"""What a revision's model receives: for a chat request, the documents retrieved and the system message rendered.

A revision with neither a retriever nor ``prompt.templates.system`` takes
the plain path (:func:`inferstack.router.bundle.apply_bundle` alone, no
awaits). Otherwise :func:`prepare` embeds the query, searches the revision's
pinned index version and renders the revision's template; a failed
retrieval follows the revision's ``onFailure``: a :class:`Refusal` (503) or
the same request without documents, counted either way. Completions
(``/v1/completions``) carry a raw prompt the router cannot template: they
take the plain path.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import aiohttp

from inferstack.core.prompttemplates import Template, TemplateError
from inferstack.core.retrieval import (
    DEFAULT_SYSTEM_TEMPLATE,
    Document,
    build_query,
    retrieved_header,
    system_message,
)
from inferstack.core.trafficplan import RetrievalPlan, RevisionBundle
from inferstack.router.bundle import apply_bundle, without_system
from inferstack.router.errors import redact
from inferstack.router.metrics import Labels, RouterMetrics
from inferstack.router.retrieval import RetrievalFailed, Retriever

log = logging.getLogger(__name__)

RETRIEVED_HEADER = "x-inferstack-retrieved"


@dataclass(frozen=True)
class RevisionPrompts:
    """A revision's templates, compiled once per plan; ``error`` when one does not compile."""

    system: Template | None = None
    query: Template | None = None
    error: TemplateError | None = None


def compile_prompts(bundle: RevisionBundle) -> RevisionPrompts | None:
    """None: the revision neither retrieves nor templates (the plain path)."""
    if bundle.retrieval is None and bundle.system_template is None:
        return None
    try:
        return RevisionPrompts(
            system=Template("prompt.templates.system", bundle.system_template or DEFAULT_SYSTEM_TEMPLATE),
            query=Template("retriever.queryTemplate", bundle.retrieval.query_template)
            if bundle.retrieval is not None and bundle.retrieval.query_template else None,
        )
    except TemplateError as exc:
        log.error("revision %s: %s", bundle.revision, exc)
        return RevisionPrompts(error=exc)


class Refusal(Exception):
    """The request is answered by the router with this error; nothing is forwarded."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Prepared:
    body: dict[str, Any]
    retrieved: str | None = None  # the x-inferstack-retrieved value; None when the revision retrieves nothing
    documents: tuple[Document, ...] = ()  # what was retrieved, nearest first: for the evaluators and judges

    @property
    def document_ids(self) -> tuple[str, ...]:
        return tuple(d.id for d in self.documents)


def _secrets_of(plan: RetrievalPlan) -> tuple[str | None, ...]:
    dsn = plan.store_dsn or ""
    try:
        password = urllib.parse.urlsplit(dsn).password
    except ValueError:
        password = None
    return dsn, password


async def _retrieve(
    session: aiohttp.ClientSession, retriever: Retriever, metrics: RouterMetrics, plan: RetrievalPlan, query: str,
    labels: Labels, request_id: str,
) -> list[Document]:
    started = time.perf_counter()
    try:
        documents = await retriever.retrieve(session, plan, query, request_id)
    except RetrievalFailed as err:
        metrics.retrieval_errors.labels(*labels, err.kind).inc()
        log.warning("request %s to %s/%s revision %s: retrieval from %s__%s failed: %s: %s", redact(request_id), labels.namespace,
                    labels.stack, labels.revision, redact(plan.index), redact(plan.index_version), err.kind,
                    redact(err.detail, *_secrets_of(plan)))
        if plan.on_failure == "Fail":
            metrics.record_error(labels, "retrieval")
            raise Refusal(503, f"retrieval failed ({err.kind}); the model was not asked (request id {request_id})",
                          "retrieval_failed") from None
        metrics.answered_without_context.labels(*labels).inc()
        return []
    metrics.record_retrieval(labels, time.perf_counter() - started, len(documents))
    return documents


async def prepare(
    session: aiohttp.ClientSession, retriever: Retriever, metrics: RouterMetrics, prompts: RevisionPrompts | None,
    bundle: RevisionBundle, body: dict[str, Any], tenant: str | None, labels: Labels, request_id: str, *, chat: bool,
) -> Prepared:
    """The body ``bundle``'s backend gets; :class:`Refusal` when the request must not reach it."""
    if not chat or prompts is None:
        return Prepared(apply_bundle(body, bundle, tenant, chat=chat))
    try:
        if prompts.error is not None:
            raise prompts.error
        assert prompts.system is not None
        messages = without_system(body)
        documents: list[Document] = []
        header = None
        if bundle.retrieval is not None:
            query = build_query(messages, prompts.query)
            if query:  # no user text: nothing to search for, and nothing failed
                documents = await _retrieve(session, retriever, metrics, bundle.retrieval, query, labels, request_id)
            header = retrieved_header([d.id for d in documents], bundle.retrieval.top_k)
        system = system_message(prompts.system, bundle.system_prompt, documents, messages, body.get("tools") or bundle.tools)
    except TemplateError as exc:
        metrics.record_error(labels, "template")
        raise Refusal(500, f"{exc} (request id {request_id})", "template_error") from None
    return Prepared(apply_bundle(body, bundle, tenant, chat=chat, system_prompt=system), header, tuple(documents))
