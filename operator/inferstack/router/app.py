"""The router's HTTP application: OpenAI endpoints (served by router/server.py), health, readiness and metrics
(aiohttp, on the admin port)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import BaseTestServer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inferstack.api.v1alpha1 import OTHER_SLICE
from inferstack.core.retrieval import Document
from inferstack.core.trafficplan import RevisionBundle, TrafficPlan
from inferstack.router import proxy, requests, tracing
from inferstack.router.assignment import Role, choose
from inferstack.router.audit import AuditLog
from inferstack.router.augment import (
    RETRIEVED_HEADER,
    Prepared,
    Refusal,
    RevisionPrompts,
    compile_prompts,
    prepare,
)
from inferstack.router.auth import Authenticator, ModelNotAllowed, forbidden, identity_of, resolve, visible
from inferstack.router.bundle import apply_bundle
from inferstack.router.cache import CacheMemory, ResponseCache, cache_key, cacheable
from inferstack.router.errors import UpstreamError, classify, error_response, json_response, redact
from inferstack.router.evaluators import Evaluators
from inferstack.router.exchange import Exchange, records_content, rule_evaluations
from inferstack.router.feedback import HEADER as RESPONSE_ID_HEADER
from inferstack.router.feedback import FeedbackEndpoint
from inferstack.router.judge import JudgeRunner
from inferstack.router.metrics import Labels, RouterMetrics, SliceLabels
from inferstack.router.plansource import AmbiguousModel, PlanSource, PlanStore, UnknownModel
from inferstack.router.randomness import token_bytes
from inferstack.router.retrieval import Retriever, store_dsns
from inferstack.router.server import HTTPServer, Request, Response, StreamResponse
from inferstack.router.settings import RouterSettings
from inferstack.router.shadow import ShadowMirror, mirror, record_checked_answer
from inferstack.router.tracing import Tracing
from inferstack.router.upstream import UpstreamClient, UpstreamResponse

log = logging.getLogger(__name__)


def new_request_id() -> str:
    """``uuid.uuid4().hex`` (16 random bytes, version 4, RFC 4122 variant) without the UUID object it
    builds, a third of its ~3 µs on every request that brings no id; the bytes from the pooled CSPRNG."""
    raw = bytearray(token_bytes(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    return raw.hex()


def client_request_id(value: str | None) -> str:
    """The client's ``x-request-id`` when it is 1 to 128 printable ASCII characters, else a new one: it is
    echoed in the answer's headers, sent to the model server and written to logs, traces and the audit line."""
    if value and len(value) <= 128 and value.isascii() and value.isprintable():
        return value
    return new_request_id()


class SlowClient(Exception):
    """A streaming client left the stream unread for longer than --stream-write-timeout."""


class _Relay:
    """The sink of :meth:`UpstreamResponse.relay` (router/upstream.py) for a streamed answer.

    Called from the model server connection's ``data_received`` with each read's body bytes: it
    observes them and writes them to the client's socket there and then, chunked (``size CRLF
    data CRLF``, one ``transport.write``). A paced stream has one read per event, and this saves
    the future, the task wakeup and the write coroutines of each (issue 14). The head, held by
    ``out`` until then, goes with the first bytes, and the stream's end with the last ones (one
    write each, not three). It returns False, which holds the model server's reading and hands
    control back to the handler, when the client's socket is over its high-water mark (the
    handler waits for it to drain, bounded by --stream-write-timeout) or closing (the client
    went away).
    """

    __slots__ = ("feed", "first", "gone", "observer", "out", "protocol", "response", "transport")

    def __init__(self, observer: proxy.SSEObserver, out: StreamResponse, request: Request, response: Any) -> None:
        self.observer = observer
        self.feed = observer.feed  # bound once: this runs per token
        self.out = out
        self.response = response  # complete: the bytes at hand are the last
        self.transport = request.transport
        self.protocol = request.protocol  # writing_paused while the transport is over its high-water mark
        self.gone = False
        self.first = 0.0  # perf_counter of the first body bytes (time to first token)

    def __call__(self, data: bytes) -> bool:
        chunk = self.feed(data)
        out = self.out
        if out.pending or not self.first or self.response.complete:
            return self._edge(chunk)  # the first bytes (the head goes with them) or the last (the end does)
        if chunk:  # else a partial line held back while stripping the usage chunk
            transport = self.transport
            if transport.is_closing():
                self.gone = True
                return False
            transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))  # out.framed, inlined: the head is gone
        return not self.protocol.writing_paused

    def _edge(self, chunk: bytes) -> bool:
        if not self.first:
            self.first = time.perf_counter()
        if self.response.complete:
            chunk += self.observer.flush()  # a last line without newline, held while stripping
            frame = self.out.end(chunk)
        else:
            frame = self.out.framed(chunk)
        if not frame:
            return True
        transport = self.transport
        if transport.is_closing():
            self.gone = True
            return False
        transport.write(frame)
        return not self.protocol.writing_paused


class Router:
    def __init__(self, store: PlanStore, settings: RouterSettings, metrics: RouterMetrics, auth: Authenticator,
                 tracer: Tracing | None = None) -> None:
        self.store = store
        # Traces (router/tracing.py, off unless --otlp-endpoint) and the audit log (--audit-log):
        # both written from each request's Exchange (router/exchange.py).
        self.tracing = tracer or Tracing.off()
        self.audit = AuditLog(settings.audit_log, metrics.registry)
        # Who calls (router/auth.py): a key's namespace bounds what it sees, its tenant the caches.
        self.auth = auth
        self.settings = settings
        self.metrics = metrics
        self.slices = SliceLabels(settings.slices)
        self.shadow = ShadowMirror(settings.shadow_queue_limit, metrics)
        self.caches: dict[str, ResponseCache] = {}
        # One byte budget for every stack's cache: plans set entries, the router's flags set bytes.
        self.cache_memory = CacheMemory(settings.cache_max_bytes)
        self.limits = requests.Limits(
            max_body_bytes=settings.max_request_bytes, max_depth=settings.max_json_depth,
            max_output_tokens=settings.max_output_tokens, read_timeout=settings.request_read_timeout,
        )
        self.streams = 0  # client-facing streams open now (--max-concurrent-streams)
        # Per stack: its evaluators compiled per revision (compiling per answer would be waste).
        self.evaluators: dict[str, dict[str, Evaluators]] = {}
        # Per stack: each revision's templates compiled (router/augment.py); None: the plain path.
        self.prompts: dict[str, dict[str, RevisionPrompts | None]] = {}
        self.retriever = Retriever(settings.store_max_connections, settings.connect_timeout)
        # POST /v1/feedback, and the signed response id on every answer (router/feedback.py).
        self.feedback = FeedbackEndpoint.from_keys(store, metrics, settings.feedback_keys, settings.feedback_seen_limit,
                                                   tracer=self.tracing, audit=self.audit)
        self.judges = JudgeRunner(metrics, store.get, queue_limit=settings.judge_queue_limit, workers=settings.judge_workers,
                                  tracer=self.tracing, audit=self.audit)
        self.session: aiohttp.ClientSession | None = None  # judges, retrieval; hosted (https) model servers
        self.upstream: UpstreamClient | None = None  # the calls to model servers (router/upstream.py)

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.settings.max_connections, enable_cleanup_closed=True)
        # No cookie jar and no env proxies: this is a pure pass-through to in-cluster backends.
        self.session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
        self.upstream = UpstreamClient(self.settings.max_connections, self.session)
        self.judges.start(self.session)
        self.audit.start()

    async def close(self) -> None:
        await self.shadow.close()
        await self.judges.close()
        await self.retriever.close()
        if self.upstream is not None:
            await self.upstream.close()
        if self.session is not None:
            await self.session.close()
        self.audit.stop()
        self.tracing.shutdown()  # exports what is queued

    def plan_changed(self, key: str, plan: TrafficPlan | None) -> None:
        namespace, _, stack = key.partition("/")
        self.judges.plan_changed(key, plan)
        if plan is None:
            self._drop_cache(key)
            self.evaluators.pop(key, None)
            self.prompts.pop(key, None)
            self.retriever.keep_only(store_dsns(b for p in self.store.plans() for b in (p.stable, p.candidate)))
            self.metrics.plan_serial.remove(namespace, stack)
            return
        self.metrics.plan_serial.labels(namespace, stack).set(plan.serial)
        # Compiled once per plan, not per answer; a revision's tool schemas are its own.
        bundles = [b for b in (plan.stable, plan.candidate) if b is not None]
        self.evaluators[key] = {b.revision: Evaluators.compile(plan.evaluation.evaluators, b.tools) for b in bundles}
        self.prompts[key] = {b.revision: compile_prompts(b) for b in bundles}
        self.retriever.keep_only(store_dsns(b for p in self.store.plans() for b in (p.stable, p.candidate)))
        cache = self.caches.get(key)
        if not plan.response_cache.enabled:
            self._drop_cache(key)
        elif cache is None or cache.max_entries != plan.response_cache.max_entries:
            # Entries are keyed by revision and cache namespace, so keeping the
            # cache across plan changes can never serve another revision's answer.
            self._drop_cache(key)
            self.caches[key] = ResponseCache(
                plan.response_cache.max_entries, self.settings.cache_max_entry_bytes, memory=self.cache_memory
            )

    def _drop_cache(self, key: str) -> None:
        cache = self.caches.pop(key, None)
        if cache is not None:
            cache.clear()  # its bytes go back to the router's budget

    # -------------------------------------------------------------- handlers

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if len(self.store) == 0:
            return web.json_response({"status": "no traffic plan loaded"}, status=503)
        if not self.auth.ready:
            return web.json_response({"status": "API keys not listed yet"}, status=503)
        return web.json_response({"status": "ready", "stacks": len(self.store)})

    async def metrics_handler(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, request: Request) -> Response:
        plans = visible(identity_of(request), self.store.plans())  # only what the caller may call
        names = [p.stack for p in plans]
        data = [
            {
                "id": p.stack if names.count(p.stack) == 1 else p.key,
                "object": "model",
                "created": 0,
                "owned_by": p.namespace,
                "root": p.key,
            }
            for p in plans
        ]
        return json_response({"object": "list", "data": data})

    async def chat_completions(self, request: Request) -> Response | StreamResponse:
        return await self._accept(request, "/v1/chat/completions", chat=True)

    async def completions(self, request: Request) -> Response | StreamResponse:
        return await self._accept(request, "/v1/completions", chat=False)

    async def _accept(self, request: Request, path: str, *, chat: bool) -> Response | StreamResponse:
        """Validate the body (router/requests.py) and hold a stream slot, before anything is forwarded."""
        try:
            body = await requests.read_request(request, self.limits, chat=chat)
        except requests.RequestError as err:
            return err.response()
        if not body.get("stream"):
            return await self._handle(request, path, body, chat=chat)
        if self.streams >= self.settings.max_concurrent_streams:
            self.metrics.streams_refused.inc()
            return error_response(
                429, f"this router serves {self.settings.max_concurrent_streams} streams at once; retry later",
                "rate_limit_exceeded", {"Retry-After": "1"},
            )
        self.streams += 1
        try:
            return await self._handle(request, path, body, chat=chat)
        finally:
            self.streams -= 1

    # ---------------------------------------------------------------- proxy

    async def _handle(self, request: Request, path: str, body: dict[str, Any], *, chat: bool) -> Response | StreamResponse:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return error_response(400, "`model` must name a stack: <name> or <namespace>/<name>", "missing_model")
        identity = identity_of(request)
        try:
            plan = resolve(identity, self.store, model)
        except UnknownModel:  # also a stack of another namespace than the key's: the same answer
            return error_response(404, f"The model `{model}` does not exist.", "model_not_found")
        except ModelNotAllowed:
            self.auth.refused("model_not_allowed")
            return forbidden(model)
        except AmbiguousModel as exc:
            return error_response(400, str(exc), "ambiguous_model")

        request_id = client_request_id(request.headers.get("x-request-id"))
        route = choose(plan, request.headers, request_id)
        tenant = identity.tenant  # from the key or the trusted proxy, never from a header a client sets
        slice_ = self._slice(plan, request.headers)
        ex = Exchange.begin(
            body, chat=chat, namespace=plan.namespace, stack=plan.stack, tenant=tenant, slice_=slice_, request_id=request_id,
            record_content=records_content(plan.observability.content_sample_rate, identity.record_content),
        )
        with self.tracing.request(request.headers, ex.span_name, {}) as span:
            if span is not None and span.is_recording():
                ex.trace_id = format(span.get_span_context().trace_id, "032x")
            if route.shadow is not None:
                self.judges.expect_pair(plan, request_id)
                # Started inside the request's span: the shadow copy's spans are its children.
                self._mirror(plan, route.shadow, path, body, tenant, slice_, request_id, chat=chat)
            response = await self._serve(request, plan, route.role, route.bundle, path, body, tenant, slice_, request_id,
                                         ex, chat=chat)
            ex.status = response.status
            if span is not None and span.is_recording():
                span.set_attributes(ex.span_attributes())
                # The bundle that answered (stable, after a candidate's fallback): looked up only for a traced request.
                served = plan.candidate if plan.candidate is not None and plan.candidate.revision == ex.revision else plan.stable
                span.set_attribute("gen_ai.provider.name", tracing.provider_name(served))
                tracing.evaluations_event(span, rule_evaluations(ex.evaluations), ex.completion_id or None)
                if ex.error is not None:
                    tracing.failed(span, ex.error)
        if self.audit.enabled:
            self.audit.write(ex.audit_record())
        return response

    def _slice(self, plan: TrafficPlan, headers: Any) -> str:
        """The request's slice: a value the stack declares, else ``other``; nothing a client sends adds a label."""
        ev = plan.evaluation
        if not ev.slices:
            return self.slices.label(headers.get(self.settings.slice_header))
        value = (headers.get(ev.slice_header) or "").strip()
        return value if value in ev.slices else OTHER_SLICE

    def _evaluators(self, plan: TrafficPlan, revision: str) -> Evaluators | None:
        return self.evaluators.get(plan.key, {}).get(revision)

    def _prompts(self, plan: TrafficPlan, revision: str) -> RevisionPrompts | None:
        return self.prompts.get(plan.key, {}).get(revision)

    def _mirror(
        self, plan: TrafficPlan, bundle: RevisionBundle, path: str, body: dict[str, Any],
        tenant: str | None, slice_: str, request_id: str, *, chat: bool,
    ) -> None:
        assert self.session is not None and self.upstream is not None
        labels = Labels(plan.namespace, plan.stack, bundle.revision, "shadow", slice_)
        stream = bool(body.get("stream"))
        session, upstream = self.session, self.upstream

        async def shadowed() -> None:
            attrs = {"inferstack.role": "shadow", "inferstack.revision": bundle.revision, "inferstack.slice": slice_,
                     "inferstack.prompt_hash": bundle.prompt_hash, "inferstack.request_id": request_id}
            with self.tracing.child(f"shadow {plan.stack}", attributes=attrs) as span:
                # The candidate's own retrieval and template, inside the mirror: the client never waits for it.
                try:
                    prepared = await self._prepare(session, plan, bundle, body, tenant, labels, request_id, chat=chat)
                except Refusal as refusal:
                    tracing.failed(span, refusal.code)
                    return  # counted by prepare; a shadow answer is discarded anyway
                if span is not None and prepared.retrieved:
                    span.set_attribute("inferstack.retrieved_ids", prepared.retrieved.split(","))
                await mirror(
                    upstream, self.metrics, labels, bundle, path, body, prepared.body,
                    request_id=request_id,
                    timeout=proxy.timeout_for(stream, self.settings.upstream_timeout, self.settings.connect_timeout),
                    max_response_bytes=self.settings.max_response_bytes,
                    evaluators=self._evaluators(plan, bundle.revision),
                    on_answer=lambda answer: self.judges.answered(plan, labels, body, answer.text, request_id,
                                                                  prepared.documents),
                    tracer=self.tracing,
                    retrieved=prepared.document_ids,  # the candidate's own documents: its answer is scored on them
                )

        self.shadow.submit(plan.namespace, plan.stack, shadowed())

    async def _prepare(
        self, session: aiohttp.ClientSession, plan: TrafficPlan, bundle: RevisionBundle, body: dict[str, Any],
        tenant: str | None, labels: Labels, request_id: str, *, chat: bool,
    ) -> Prepared:
        """:func:`prepare` for ``bundle``; a revision that retrieves gets a ``retrieval {index}`` span
        (the GenAI conventions' retrieval span; its data source is the pinned index version)."""
        prompts = self._prompts(plan, bundle.revision)
        retrieval = bundle.retrieval if chat and prompts is not None else None
        if retrieval is None:
            return await prepare(session, self.retriever, self.metrics, prompts, bundle, body, tenant, labels, request_id, chat=chat)
        attrs = {"gen_ai.operation.name": "retrieval",
                 "gen_ai.data_source.id": f"{retrieval.index}/{retrieval.index_version}",
                 "inferstack.index": retrieval.index, "inferstack.index_version": retrieval.index_version,
                 "inferstack.top_k": retrieval.top_k, "gen_ai.request.model": retrieval.embedding_model}
        with self.tracing.child(f"retrieval {retrieval.index}", attributes=attrs) as span:
            try:
                prepared = await prepare(session, self.retriever, self.metrics, prompts, bundle, body, tenant, labels, request_id,
                                         chat=chat)
            except Refusal as refusal:
                tracing.failed(span, refusal.code)
                raise
            if span is not None:
                span.set_attribute("inferstack.retrieved_ids", prepared.retrieved.split(",") if prepared.retrieved else [])
            return prepared

    async def _serve(
        self, request: Request, plan: TrafficPlan, role: Role, bundle: RevisionBundle, path: str,
        body: dict[str, Any], tenant: str | None, slice_: str, request_id: str, ex: Exchange, *, chat: bool,
    ) -> Response | StreamResponse:
        assert self.session is not None and self.upstream is not None
        started = time.perf_counter()
        labels = Labels(plan.namespace, plan.stack, bundle.revision, role, slice_)
        ex.revision, ex.role, ex.prompt_hash = bundle.revision, role, bundle.prompt_hash
        headers = {
            "x-inferstack-stack": plan.key,
            "x-inferstack-revision": bundle.revision,
            "x-inferstack-prompt-hash": bundle.prompt_hash,
            "x-inferstack-role": role,
            "x-inferstack-cache": "miss",
            "x-request-id": request_id,
            # Signed: any replica attributes later feedback to this revision and slice.
            RESPONSE_ID_HEADER: self.feedback.response_id(labels, tracing.current_context() if self.tracing.enabled else None),
        }
        ex.response_id = headers[RESPONSE_ID_HEADER]
        prompts = self._prompts(plan, bundle.revision)
        documents: tuple[Document, ...] = ()  # what this revision retrieved: the answer's evaluators see them
        if prompts is None:
            upstream_body = apply_bundle(body, bundle, tenant, chat=chat)  # no retriever, no template: no await
        else:
            try:
                prepared = await self._prepare(self.session, plan, bundle, body, tenant, labels, request_id, chat=chat)
            except Refusal as refusal:
                ex.error = refusal.code
                return error_response(refusal.status, refusal.message, refusal.code, headers)
            upstream_body = prepared.body
            if prepared.retrieved is not None:
                headers[RETRIEVED_HEADER] = prepared.retrieved
                ex.retrieved = prepared.retrieved
            documents = prepared.documents
        ex.sent(upstream_body)
        stream = bool(body.get("stream"))

        # No tenant (--auth none): no one's cached answer, and none kept for anyone.
        cache = self.caches.get(plan.key) if tenant is not None and cacheable(body) else None
        key = cache_key(tenant or "", bundle.cache_namespace, bundle.revision, upstream_body) if cache is not None else ""
        if cache is not None:
            hit = cache.get(key)
            if hit is not None:
                headers["x-inferstack-cache"] = "hit"
                ex.cache_hit = True
                series = self.metrics.series(labels)
                series.child("cache_hits").inc()
                series.requests.inc()
                series.duration.observe(time.perf_counter() - started)
                return Response(hit.body, headers={**headers, "Content-Type": hit.content_type})

        timeout = proxy.timeout_for(stream, self.settings.upstream_timeout, self.settings.connect_timeout)
        strip_usage = False
        if stream:
            upstream_body, strip_usage = proxy.ask_usage(upstream_body)
        upstream = self.tracing.upstream(tracing.current(), upstream_body, bundle) if self.tracing.enabled else None
        try:
            with tracing.use(upstream):
                response = await proxy.send(self.upstream, bundle, path, upstream_body, request_id=request_id, timeout=timeout)
        except UpstreamError as err:
            self.metrics.record_error(labels, err.kind)
            tracing.failed(upstream, err.kind)
            tracing.end(upstream)
            if role == "candidate" and err.kind == "connect" and self.settings.candidate_fallback:
                # Nothing reached the candidate, so a retry on stable cannot run the request twice.
                self.metrics.fallbacks.labels(plan.namespace, plan.stack, bundle.revision).inc()
                ex.fallback = True
                return await self._serve(request, plan, "stable", plan.stable, path, body, tenant, slice_, request_id, ex,
                                         chat=chat)
            return self._failed(err, labels, bundle, headers, ex)

        # Closing (not releasing) on every exit drops the backend connection when
        # the answer was not read to the end, which makes vLLM abort the generation.
        try:
            if stream and response.status == 200:
                return await self._stream(request, response, labels, headers, body, started, plan, strip_usage, ex, documents)
            return await self._whole(response, labels, headers, body, started, cache, key, plan, ex, documents)
        except UpstreamError as err:
            self.metrics.record_error(labels, err.kind)
            tracing.failed(upstream, err.kind)
            return self._failed(err, labels, bundle, headers, ex)
        finally:
            response.close()
            tracing.end(upstream)

    @staticmethod
    def _failed(err: UpstreamError, labels: Labels, bundle: RevisionBundle, headers: dict[str, str], ex: Exchange) -> Response:
        """The client gets a generic message and the request id; the log the details, never the endpoint's token."""
        request_id = headers["x-request-id"]
        ex.error = err.kind
        log.warning("request %s to %s/%s revision %s: %s: %s", redact(request_id), labels.namespace, labels.stack,
                    labels.revision, err.kind, redact(err.detail, bundle.api_key))
        return error_response(err.status, f"{err.message} (request id {request_id})", err.kind, headers)

    async def _whole(
        self, response: UpstreamResponse, labels: Labels, headers: dict[str, str], body: dict[str, Any],
        started: float, cache: ResponseCache | None, key: str, plan: TrafficPlan, ex: Exchange,
        documents: Sequence[Document],
    ) -> Response:
        data = await proxy.read_bounded(response, self.settings.max_response_bytes)
        content_type = response.headers.get("Content-Type", "application/json")
        if response.status != 200:
            # A backend 4xx is the client's problem (bad parameters): pass it on as is.
            self.metrics.record_error(labels, f"upstream_{response.status // 100}xx")
            ex.error = f"upstream_{response.status // 100}xx"
            bundle_key = next((b.api_key for b in (plan.stable, plan.candidate) if b and b.revision == labels.revision), None)
            if bundle_key and bundle_key.encode() in data:  # a hosted endpoint's 401 quoting the key
                data = data.replace(bundle_key.encode(), b"<redacted>")
            return Response(data, response.status, {**headers, "Content-Type": content_type})
        answer = proxy.parse_answer(data)
        self._record(plan, labels, body, answer, started, None, headers["x-request-id"], ex, documents)
        if cache is not None:
            cache.put(key, data, content_type, plan.response_cache.ttl_seconds)
        return Response(data, headers={**headers, "Content-Type": content_type})

    async def _stream(
        self, request: Request, response: UpstreamResponse, labels: Labels, headers: dict[str, str],
        body: dict[str, Any], started: float, plan: TrafficPlan, strip_usage: bool, ex: Exchange,
        documents: Sequence[Document],
    ) -> StreamResponse:
        out = StreamResponse(
            headers={
                **headers,
                "Content-Type": response.headers.get("Content-Type", "text/event-stream"),
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        observer = proxy.SSEObserver(strip_usage=strip_usage)
        ttft = None
        # Our UpstreamClient's answers are relayed from the model server's connection (_Relay);
        # aiohttp's (a hosted https endpoint) are read here.
        relay = getattr(response, "relay", None) if request.transport is not None else None
        try:
            if relay is not None:
                sink = _Relay(observer, out, request, response)
                out.hold(request)
                if not getattr(response, "buffered", False):
                    await out.write(b"")  # no token yet: the client gets the head now, not with the first one
                while not await relay(sink):
                    if sink.gone:
                        raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")  # as out.write would
                    await self._write_bounded(out, request)
                ttft = sink.first - started if sink.first else None
            else:
                await out.prepare(request)
                transport = request.transport
                async for read in response.content.iter_any():
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    chunk = observer.feed(read)
                    if not chunk:
                        continue  # a partial line held back while stripping the usage chunk
                    if transport is None or transport.get_write_buffer_size() + len(chunk) > 16 * 1024:
                        # The client may be behind: bound how long it may leave the stream unread.
                        await self._write_bounded(out, request, chunk)
                    else:
                        await out.write(chunk)  # stays under the buffer's high-water mark (64 KiB): cannot block
            tail = observer.flush()  # a last line without newline, held while stripping
            if tail:
                await self._write_bounded(out, request, tail)
        except SlowClient:
            # Disconnected; returning closes the upstream response, so the model server aborts the generation.
            self.metrics.record_error(labels, "client_timeout")
            ex.error = "client_timeout"
            return out
        except (aiohttp.ClientError, TimeoutError) as exc:
            if isinstance(exc, ConnectionResetError):  # the client went away
                self.metrics.record_error(labels, "client_disconnect")
                ex.error = "client_disconnect"
                return out
            # Headers are sent, so the status cannot change: end the stream with
            # an error event, which the openai client raises as an APIError.
            err = classify(exc)
            self.metrics.record_error(labels, err.kind)
            ex.error = err.kind
            log.warning("request %s to %s/%s revision %s: %s mid-stream: %s", redact(headers["x-request-id"]), labels.namespace,
                        labels.stack, labels.revision, err.kind, redact(err.detail))
            message = f"{err.message} (request id {headers['x-request-id']})"
            event = {"error": {"message": message, "type": "upstream_error", "code": err.kind}}
            await out.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            await out.write_eof()
            return out
        except ConnectionResetError:
            self.metrics.record_error(labels, "client_disconnect")
            ex.error = "client_disconnect"
            return out
        await out.write_eof()
        self._record(plan, labels, body, observer.finish(), started, ttft, headers["x-request-id"], ex, documents)
        return out

    async def _write_bounded(self, out: StreamResponse, request: Request, chunk: bytes = b"") -> None:
        """Write ``chunk`` (none: only wait until the client's socket is under its high-water mark),
        for at most --stream-write-timeout; past it the client is disconnected (SlowClient)."""
        try:
            async with asyncio.timeout(self.settings.stream_write_timeout):
                if chunk:
                    await out.write(chunk)
                else:
                    await out.drain()
        except TimeoutError:
            if request.transport is not None:
                request.transport.abort()  # drop what it never read: no buffer held for it
            raise SlowClient from None

    def _record(
        self, plan: TrafficPlan, labels: Labels, body: dict[str, Any], answer: proxy.Answer, started: float,
        ttft: float | None, request_id: str, ex: Exchange, documents: Sequence[Document],
    ) -> None:
        """Score a client-facing answer; ``documents``: what its revision retrieved for it (none: nothing)."""
        scores = record_checked_answer(self.metrics, labels, body, answer, started, ttft, self._evaluators(plan, labels.revision),
                                       tuple(d.id for d in documents))
        ex.answered(answer, scores)
        self.judges.answered(plan, labels, body, answer.text, request_id, documents)


ROUTER = "router"  # app[ROUTER]: the Router of a RouterApp


class RouterApp:
    """The client-facing app: the OpenAI endpoints of one :class:`Router`, and what runs beside it (plan and key
    sources). Served by router/server.py's :class:`HTTPServer` (:meth:`server`); started and stopped by
    :class:`RouterRunner`."""

    def __init__(self, router: Router, auth: Authenticator, sources: Sequence[PlanSource]) -> None:
        self.router = router
        self.auth = auth
        self.sources = list(sources)
        Endpoint = Callable[[Request], Awaitable[Response | StreamResponse]]
        self.routes: dict[str, tuple[str, Endpoint]] = {
            "/v1/chat/completions": ("POST", router.chat_completions),
            "/v1/completions": ("POST", router.completions),
            "/v1/models": ("GET", router.models),
            "/v1/feedback": ("POST", router.feedback.handle),
        }

    def __getitem__(self, key: str) -> Router:
        if key != ROUTER:
            raise KeyError(key)
        return self.router

    async def handle(self, request: Request) -> Response | StreamResponse:
        """Every request is authenticated first (before its body is read), then routed; unknown paths and
        methods are OpenAI-style JSON too."""
        refused = self.auth.admit(request)
        if refused is not None:
            return refused
        route = self.routes.get(request.path)
        if route is None:
            return error_response(404, "Not Found")
        method, endpoint = route
        if request.method != method:
            return error_response(405, "Method Not Allowed", None, {"Allow": method})
        return await endpoint(request)

    def server(self) -> HTTPServer:
        settings = self.router.settings
        return HTTPServer(self.handle, max_body=settings.max_request_bytes,
                          head_timeout=settings.request_read_timeout or 30.0,
                          internal_error=lambda: error_response(500, "internal error in the router", "internal"))

    async def startup(self) -> None:
        await self.router.open()
        await self.auth.start()
        for source in self.sources:
            await source.start(self.router.store)

    async def cleanup(self) -> None:
        for source in self.sources:
            await source.stop()
        await self.auth.stop()
        await self.router.close()


class RouterRunner(web.BaseRunner):
    """aiohttp's runner protocol around a :class:`RouterApp`, so its sites (``web.TCPSite``) and test servers
    listen for it: ``setup`` starts the app, ``cleanup`` stops listening, gives in-flight answers the
    shutdown timeout, then stops the app."""

    def __init__(self, app: RouterApp, **kwargs: Any) -> None:
        kwargs.pop("handler_cancellation", None)  # always: a client that goes away cancels its handler
        kwargs.pop("access_log", None)
        super().__init__(**kwargs)
        self.app = app

    async def shutdown(self) -> None:
        pass

    async def _make_server(self) -> Any:
        await self.app.startup()
        return self.app.server()

    async def _cleanup_server(self) -> None:
        await self.app.cleanup()


class RouterTestServer(BaseTestServer):
    """``aiohttp.test_utils.TestServer`` for a :class:`RouterApp`: a ``TestClient`` talks to it over HTTP."""

    def __init__(self, app: RouterApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return RouterRunner(self.app, **kwargs)


def build_app(
    store: PlanStore | None = None,
    settings: RouterSettings | None = None,
    sources: Sequence[PlanSource] = (),
    metrics: RouterMetrics | None = None,
    auth: Authenticator | None = None,
    tracer: Tracing | None = None,
) -> RouterApp:
    """The client-facing app (the OpenAI API, every request authenticated); health and
    metrics are on another port: :func:`build_admin_app`. ``tracer``: none, or from
    :meth:`Tracing.from_settings` (``--otlp-endpoint``)."""
    settings = settings or RouterSettings()
    metrics = metrics or RouterMetrics()
    store = store if store is not None else PlanStore()
    auth = auth or Authenticator.from_settings(settings, metrics.registry)
    router = Router(store, settings, metrics, auth, tracer if tracer is not None else Tracing.from_settings(settings))
    store.add_listener(router.plan_changed)
    for plan in store.plans():
        router.plan_changed(plan.key, plan)
    return RouterApp(router, auth, sources)


def build_admin_app(router: Router) -> web.Application:
    """Liveness, readiness and metrics, unauthenticated, for the kubelet and Prometheus only:
    served on ``--metrics-port``, never on the clients' port."""
    app = web.Application()
    app.router.add_get("/healthz", router.healthz)
    app.router.add_get("/readyz", router.readyz)
    app.router.add_get("/metrics", router.metrics_handler)
    return app


async def serve(app: RouterApp, host: str, port: int, *, admin_host: str, admin_port: int, shutdown_timeout: float,
                stop: asyncio.Event) -> None:
    """Serve ``app`` on ``host:port`` and :func:`build_admin_app` on ``admin_host:admin_port`` (0: not at all)
    until ``stop`` is set; then stop listening, give in-flight answers ``shutdown_timeout`` seconds, stop."""
    runner = RouterRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    admin: web.AppRunner | None = None
    try:
        await web.TCPSite(runner, host, port).start()
        if admin_port:
            admin = web.AppRunner(build_admin_app(app.router), access_log=None)
            await admin.setup()
            await web.TCPSite(admin, admin_host, admin_port).start()
        await stop.wait()
    finally:
        if admin is not None:
            await admin.cleanup()
        await runner.cleanup()
