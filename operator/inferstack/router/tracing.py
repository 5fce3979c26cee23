"""OpenTelemetry traces of the router, in the GenAI semantic conventions.

Off by default; ``--otlp-endpoint`` turns it on (OTLP over HTTP/protobuf to a
Collector, Jaeger, Tempo, ...). Then each client request is one SERVER span
named ``{operation} {model}`` (``chat support-bot``) with the ``gen_ai.*``
attributes of the conventions and inferstack's own (``inferstack.*``:
stack, namespace, revision, role, slice, prompt hash, cache, response id,
retrieved documents). Its children: ``retrieve`` (embedding and index
search), the upstream call (CLIENT, whose W3C ``traceparent`` the model
server receives) and ``shadow`` (the candidate's copy, with its own
retrieval and upstream call).

``gen_ai.provider.name``, which the conventions require on both the request
span and the upstream call's, comes from the revision's bundle
(:func:`provider_name`): ``vllm`` for a model server the operator runs (a
custom value: the registry lists none for vLLM), ``azure.ai.openai`` or
``openai`` for a hosted endpoint. The upstream span also names the model
server (``server.address``, ``server.port``).

Evaluation results are ``gen_ai.evaluation.result`` span events: rule checks
on the span of the answer they scored (the request's, or the shadow copy's);
judge verdicts and user feedback, which come later, on a short ``evaluate``
span whose parent is the scored request's span, so the backend shows them in
its trace.

Spans live in OTel's context (a contextvar): a handler's awaits and the
tasks it starts (the shadow copy) see the request's span as the current one,
so nothing below this module passes spans around.

**Sampling is the router's decision**, at ``--trace-sample-rate``, whatever a
client's ``traceparent`` says: a client may link its trace (its trace id is
kept) but cannot make the router record and export every request. The
exporter's queue is bounded (``BatchSpanProcessor``: it drops when full), so
a slow backend never grows the router's memory.

**Message contents** are recorded only where the stack opts in
(``spec.observability.contentRecording``), for the sampled share it sets and
never for a tenant whose key opts out (:mod:`inferstack.router.exchange`
decides; this module only writes what it is given).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from yarl import URL

log = logging.getLogger(__name__)

__all__ = ["Evaluation", "RouterSampler", "Span", "SpanContext", "SpanKind", "TraceFlags", "Tracing", "provider_name"]

SERVICE_NAME: Final = "inferstack-router"
EVALUATION_EVENT: Final = "gen_ai.evaluation.result"
MAX_CONTENT_CHARS: Final = 16 * 1024  # per recorded message list or answer
_PROPAGATOR: Final = TraceContextTextMapPropagator()  # W3C traceparent/tracestate only: no baggage from clients
_NO_SPAN: Final = nullcontext(None)  # what request() and use() are when there is nothing to trace (reusable)


def provider_name(bundle: Any) -> str:
    """``gen_ai.provider.name`` of a revision's model server, from its bundle.

    The conventions want the instrumentation's best knowledge, and a registry value where
    one applies. A revision the operator runs is vLLM (``spec.model.image``): its bundle has
    a plain ``http://`` in-cluster URL and no token, and ``vllm`` is a custom value (the
    registry has none for it). Anything else is a hosted endpoint (``spec.model.endpoint``),
    which the router calls with OpenAI's API: ``azure.ai.openai`` on Azure OpenAI's hosts,
    else ``openai`` (``server.address`` on the upstream span names the actual host)."""
    return _model_server(bundle.url, bundle.api_key_secret_ref is not None)["gen_ai.provider.name"]


@lru_cache(maxsize=1024)
def _model_server(url: str, has_token: bool) -> dict[str, Any]:
    """The upstream span's attributes that depend only on the bundle's URL: parsed once per URL, not per request."""
    parsed = URL(url)
    host = parsed.host or ""
    if parsed.scheme == "http" and not has_token:
        provider = "vllm"
    elif host.endswith(".openai.azure.com"):
        provider = "azure.ai.openai"
    else:
        provider = "openai"
    return {"gen_ai.provider.name": provider, "server.address": host, "server.port": parsed.port or 80}


class RouterSampler(Sampler):
    """Samples ``rate`` of the requests at random: neither a client's sampled flag nor its
    trace id (which a client picks) can raise the share. Child spans follow their parent
    (``ParentBased`` around it)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._random = random.Random()

    def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                      attributes: Any = None, links: Any = None, trace_state: Any = None) -> SamplingResult:
        decision = Decision.RECORD_AND_SAMPLE if self._random.random() < self.rate else Decision.DROP
        parent = trace.get_current_span(parent_context).get_span_context() if parent_context is not None else None
        # The SDK starts the span with the attributes a sampler returns: pass them on.
        return SamplingResult(decision, attributes if decision == Decision.RECORD_AND_SAMPLE else None,
                              parent.trace_state if parent is not None and parent.is_valid else trace_state)

    def get_description(self) -> str:
        return f"RouterSampler{{{self.rate}}}"


@dataclass(frozen=True)
class Evaluation:
    """One evaluation result, as the ``gen_ai.evaluation.result`` event carries it."""

    name: str
    score: float | None = None
    label: str | None = None  # pass / fail for rule checks; win / loss / tie for a pair
    explanation: str | None = None

    def attributes(self, response_id: str | None = None) -> dict[str, Any]:
        attrs: dict[str, Any] = {"gen_ai.evaluation.name": self.name}
        if self.score is not None:
            attrs["gen_ai.evaluation.score.value"] = self.score
        if self.label is not None:
            attrs["gen_ai.evaluation.score.label"] = self.label
        if self.explanation:
            attrs["gen_ai.evaluation.explanation"] = self.explanation[:512]
        if response_id:
            attrs["gen_ai.response.id"] = response_id
        return attrs


class Tracing:
    """The router's tracer, or none at all (``enabled`` False: every call is a no-op)."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("inferstack.router") if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    @classmethod
    def off(cls) -> Tracing:
        return cls(None)

    @classmethod
    def to_exporter(cls, exporter: SpanExporter, sample_rate: float, max_queue: int = 4096) -> Tracing:
        provider = TracerProvider(
            sampler=ParentBased(
                root=RouterSampler(sample_rate),
                remote_parent_sampled=RouterSampler(sample_rate),
                remote_parent_not_sampled=RouterSampler(sample_rate),
            ),
            resource=Resource.create({"service.name": SERVICE_NAME}),
        )
        provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=max_queue, schedule_delay_millis=1000))
        return cls(provider)

    @classmethod
    def to_otlp(cls, endpoint: str, sample_rate: float) -> Tracing:
        """OTLP over HTTP/protobuf to ``endpoint`` (``http://collector:4318``; ``/v1/traces`` is added)."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        url = endpoint.rstrip("/")
        if not url.endswith("/v1/traces"):
            url += "/v1/traces"
        return cls.to_exporter(OTLPSpanExporter(endpoint=url, timeout=5), sample_rate)

    @classmethod
    def from_settings(cls, settings: Any) -> Tracing:
        """Off unless ``settings.otlp_endpoint`` is set (``--otlp-endpoint``)."""
        if not settings.otlp_endpoint:
            return cls.off()
        return cls.to_otlp(settings.otlp_endpoint, settings.trace_sample_rate)

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()  # flushes what is queued

    # ------------------------------------------------------------ spans

    def request(self, headers: Mapping[str, str], name: str, attributes: dict[str, Any]) -> AbstractContextManager[Span | None]:
        """The span of one client request, current while the block runs; None when tracing is off.

        The parent is the client's W3C context, if it sent one (only ``traceparent`` and
        ``tracestate`` are read). Off, it is one shared no-op context: nothing per request.
        """
        if self.tracer is None:
            return _NO_SPAN
        return self._request(headers, name, attributes)

    @contextmanager
    def _request(self, headers: Mapping[str, str], name: str, attributes: dict[str, Any]) -> Iterator[Span | None]:
        assert self.tracer is not None
        parent = _PROPAGATOR.extract(_W3CHeaders(headers))
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield span
        finally:
            otel_context.detach(token)
            span.end()

    @contextmanager
    def child(self, name: str, kind: SpanKind = SpanKind.INTERNAL, attributes: dict[str, Any] | None = None) -> Iterator[Span | None]:
        """A child of the current span, current while the block runs; None when off or not sampled."""
        if self.tracer is None or not trace.get_current_span().is_recording():
            yield None
            return
        with self.tracer.start_as_current_span(name, kind=kind, attributes=attributes, record_exception=False,
                                               set_status_on_exception=False) as span:
            yield span

    def upstream(self, parent: Span | None, upstream_body: Mapping[str, Any], bundle: Any) -> Span | None:
        """The CLIENT span of a call to a revision's model server, child of ``parent``, not made current
        (:func:`use` makes it current around the send, so the model server receives its ``traceparent``).
        None when ``parent`` is not recorded. The caller ends it (:func:`end`) once the answer is read."""
        if self.tracer is None or parent is None or not parent.is_recording():
            return None
        operation = "chat" if "messages" in upstream_body else "text_completion"
        return self.tracer.start_span(
            f"{operation} {bundle.served_model}", context=trace.set_span_in_context(parent), kind=SpanKind.CLIENT,
            attributes={"gen_ai.operation.name": operation, "gen_ai.request.model": bundle.served_model,
                        **_model_server(bundle.url, bundle.api_key_secret_ref is not None),
                        "inferstack.revision": bundle.revision},
        )

    def later(self, parent: SpanContext | None, name: str, evaluations: Sequence[Evaluation],
              attributes: dict[str, Any] | None = None, response_id: str | None = None) -> None:
        """A result that comes after its request ended (a judge, user feedback): a short span in the
        scored request's trace, with one event per evaluation."""
        if self.tracer is None or parent is None or not parent.is_valid or not parent.trace_flags.sampled:
            return
        ctx = trace.set_span_in_context(NonRecordingSpan(parent))
        span = self.tracer.start_span(name, context=ctx, kind=SpanKind.INTERNAL, attributes=attributes)
        for ev in evaluations:
            span.add_event(EVALUATION_EVENT, ev.attributes(response_id))
        span.end()


def current() -> Span:
    return trace.get_current_span()


def current_context() -> SpanContext | None:
    """The current span's context when it is recorded (to parent a later result), else None."""
    span = trace.get_current_span()
    return span.get_span_context() if span.is_recording() else None


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's ``traceparent`` (and ``tracestate``) to an upstream request's headers."""
    span = trace.get_current_span()
    if span.get_span_context().is_valid:
        _PROPAGATOR.inject(headers)


def evaluations_event(span: Span | None, evaluations: Sequence[Evaluation], response_id: str | None = None) -> None:
    if span is None or not span.is_recording():
        return
    for ev in evaluations:
        span.add_event(EVALUATION_EVENT, ev.attributes(response_id))


def failed(span: Span | None, error_type: str) -> None:
    if span is not None and span.is_recording():
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR))


def clip(text: str) -> str:
    return text if len(text) <= MAX_CONTENT_CHARS else text[:MAX_CONTENT_CHARS] + "…"


class _W3CHeaders(Mapping[str, str]):
    """Only the W3C headers of a request, for the propagator (it reads nothing else)."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._h = {k: v for k in ("traceparent", "tracestate") if (v := headers.get(k)) is not None and len(v) <= 512}

    def __getitem__(self, key: str) -> str:
        return self._h[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._h)

    def __len__(self) -> int:
        return len(self._h)


def use(span: Span | None) -> AbstractContextManager[None]:
    """``span`` current while the block runs (nothing at all for None: untraced requests pay nothing)."""
    if span is None:
        return _NO_SPAN
    return _use(span)


@contextmanager
def _use(span: Span) -> Iterator[None]:
    with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        yield


def end(span: Span | None) -> None:
    if span is not None:
        span.end()
