"""Traces and the audit log of the router: spans in the GenAI conventions, evaluation events, W3C context,
content recording only where the stack opts in and the tenant allows, and one audit line per request.

The spans go to an in-memory exporter here; tests/e2e/test_tracing_e2e.py sends them to a real Jaeger.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_router_evaluation import IndexedRetriever, retrieval
from yarl import URL

from inferstack.core.trafficplan import RevisionBundle, SecretRef
from inferstack.router import tracing
from inferstack.router.app import ROUTER
from inferstack.router.auth import Authenticator, KeyTable
from inferstack.router.feedback import Signer
from inferstack.router.metrics import Labels
from inferstack.router.settings import RouterSettings
from inferstack.router.tracing import SpanContext, SpanKind, TraceFlags, Tracing

TEST_KEY = "isk_unit-test-key-for-team-a"  # the key router_client's requests carry (conftest.py)

CHAT = {"model": "support", "messages": [{"role": "user", "content": "When does my parcel arrive?"}], "max_tokens": 32}
EVALUATION = {
    "slices": ["billing", "shipping"],
    "sliceHeader": "x-inferstack-slice",
    "evaluators": [
        {"name": "no-refusal", "rule": {"refusal": {}}},
        {"name": "says-days", "rule": {"mustMatch": "(?i)days"}},
        {"name": "thumbs", "feedback": {"maxAge": "1h"}},
    ],
}
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def tracer_for(exporter: InMemorySpanExporter, rate: float = 1.0) -> Tracing:
    return Tracing.to_exporter(exporter, rate)


async def spans_named(tracer: Tracing, exporter: InMemorySpanExporter, prefix: str, count: int = 1, deadline: float = 5.0):  # type: ignore[no-untyped-def]
    """The finished spans whose name starts with ``prefix``, once ``count`` of them are exported (polled)."""
    end = time.monotonic() + deadline
    while True:
        assert tracer.provider is not None
        tracer.provider.force_flush()
        found = [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]
        if len(found) >= count or time.monotonic() > end:
            return found
        await asyncio.sleep(0.02)


def assert_traceparent(received: list[str], span) -> None:  # type: ignore[no-untyped-def]
    """The model server received one W3C traceparent: ``span``'s ids, sampled."""
    (value,) = received
    version, trace_id, span_id, flags = value.split("-")
    assert (version, trace_id, span_id) == ("00", f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}")
    assert int(flags, 16) & 1  # sampled


def events(span, name: str = "gen_ai.evaluation.result") -> dict[str, dict]:  # type: ignore[no-untyped-def]
    return {e.attributes["gen_ai.evaluation.name"]: dict(e.attributes) for e in span.events if e.name == name}


async def test_off_by_default_no_span_and_no_traceparent_upstream(make_plan, router_client, stable_server) -> None:
    client = await router_client(make_plan(candidate=False))
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"traceparent": CLIENT_PARENT})
    assert resp.status == 200
    assert not client.app[ROUTER].tracing.enabled
    received = await (await client.session.get(stable_server.make_url("/debug/traceparents"))).json()
    assert received == [""]  # tracing off: the router passes no trace context on


async def test_a_request_is_one_server_span_with_genai_and_inferstack_attributes(
    make_plan, router_client, stable_server, exporter
) -> None:
    tracer = tracer_for(exporter)
    client = await router_client(make_plan(candidate=False, evaluation=EVALUATION), tracer=tracer)
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"x-inferstack-slice": "shipping"})
    assert resp.status == 200
    body = await resp.json()
    (span,) = await spans_named(tracer, exporter, "chat support")
    a = span.attributes
    assert span.kind == SpanKind.SERVER
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "support"
    assert a["gen_ai.request.max_tokens"] == 32
    assert a["gen_ai.response.id"] == body["id"] and a["gen_ai.response.model"] == "model-a"
    assert a["gen_ai.usage.input_tokens"] == body["usage"]["prompt_tokens"] > 0
    assert a["gen_ai.usage.output_tokens"] == body["usage"]["completion_tokens"] > 0
    assert list(a["gen_ai.response.finish_reasons"]) == [body["choices"][0]["finish_reason"]]
    assert (a["inferstack.stack"], a["inferstack.namespace"], a["inferstack.revision"], a["inferstack.role"]) == (
        "support", "team-a", "rev-a", "stable")
    assert a["inferstack.slice"] == "shipping" and a["inferstack.prompt_hash"] == "hash-a"
    assert a["inferstack.response_id"] == resp.headers["x-inferstack-response-id"]
    assert a["inferstack.cache_hit"] is False and a["http.response.status_code"] == 200
    assert a["inferstack.tenant"] == "team-a/tests"
    assert a["gen_ai.provider.name"] == "vllm"  # a revision the operator runs (plain http, no token)
    assert "server.address" not in a  # the request span is the router's own SERVER span: it names no model server
    assert "gen_ai.input.messages" not in a  # the stack did not opt in to contents
    # The rule checks' results are events of the span of the answer they scored.
    ev = events(span)
    assert ev["no-refusal"]["gen_ai.evaluation.score.label"] == "pass"
    assert ev["no-refusal"]["gen_ai.evaluation.score.value"] == 1.0
    assert ev["no-refusal"]["gen_ai.response.id"] == body["id"]
    assert set(ev) == {"no-refusal", "says-days"}  # feedback is not a rule check
    # The upstream call is a CLIENT child whose traceparent the model server received.
    (upstream,) = await spans_named(tracer, exporter, "chat model-a")
    assert upstream.kind == SpanKind.CLIENT and upstream.parent.span_id == span.context.span_id
    assert upstream.attributes["gen_ai.provider.name"] == "vllm"
    assert (upstream.attributes["server.address"], upstream.attributes["server.port"]) == (stable_server.host, stable_server.port)
    received = await (await client.session.get(stable_server.make_url("/debug/traceparents"))).json()
    assert_traceparent(received, upstream)


@pytest.mark.parametrize(("url", "token", "provider", "port"), [
    ("http://support-7f9c2ab1.team-a.svc:8000", False, "vllm", 8000),  # the operator's vLLM revision
    ("https://api.openai.com", True, "openai", 443),
    ("https://acme.openai.azure.com/openai", True, "azure.ai.openai", 443),
    ("https://llm.example.com", False, "openai", 443),  # hosted, OpenAI's API, no token
    ("http://llm.example.com", True, "openai", 80),  # plain http, but a token: an endpoint, not the operator's vLLM
])  # fmt: skip
def test_the_upstream_span_names_the_provider_and_the_model_server(exporter, url, token, provider, port) -> None:
    tracer = tracer_for(exporter)
    ref = SecretRef(name="endpoint", key="api-key") if token else None
    bundle = RevisionBundle(revision="r1", url=url, served_model="m", cache_namespace="c", api_key_secret_ref=ref)
    with tracer.request({}, "chat support", {}) as parent:
        tracing.end(tracer.upstream(parent, {"messages": []}, bundle))
    assert tracer.provider is not None and tracer.provider.force_flush()
    (upstream,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert tracing.provider_name(bundle) == provider == upstream.attributes["gen_ai.provider.name"]
    assert upstream.attributes["server.address"] == URL(url).host and upstream.attributes["server.port"] == port


async def test_the_clients_trace_is_continued_but_sampling_is_the_routers(make_plan, router_client, exporter) -> None:
    tracer = tracer_for(exporter, rate=1.0)
    client = await router_client(make_plan(candidate=False), tracer=tracer)
    assert (await client.post("/v1/chat/completions", json=CHAT, headers={"traceparent": CLIENT_PARENT})).status == 200
    (span,) = await spans_named(tracer, exporter, "chat support")
    assert f"{span.context.trace_id:032x}" == CLIENT_TRACE and span.parent.span_id == 0x00F067AA0BA902B7
    # A client that says "sampled" cannot make a router at rate 0 record anything.
    quiet_exporter = InMemorySpanExporter()
    quiet = tracer_for(quiet_exporter, rate=0.0)
    client0 = await router_client(make_plan(candidate=False), tracer=quiet)
    for _ in range(20):
        assert (await client0.post("/v1/chat/completions", json=CHAT, headers={"traceparent": CLIENT_PARENT})).status == 200
    assert quiet.provider is not None and quiet.provider.force_flush()
    assert quiet_exporter.get_finished_spans() == ()


async def test_a_shadow_copy_is_a_child_span_with_its_own_evaluations(make_plan, router_client, candidate_server, exporter) -> None:
    tracer = tracer_for(exporter)
    client = await router_client(make_plan(shadow_percent=100, evaluation=EVALUATION), tracer=tracer)
    assert (await client.post("/v1/chat/completions", json=CHAT, headers={"x-user-id": "u1"})).status == 200
    (request,) = await spans_named(tracer, exporter, "chat support")
    (shadow,) = await spans_named(tracer, exporter, "shadow support")
    assert shadow.parent.span_id == request.context.span_id and shadow.context.trace_id == request.context.trace_id
    assert shadow.attributes["inferstack.role"] == "shadow" and shadow.attributes["inferstack.revision"] == "rev-b"
    assert shadow.attributes["gen_ai.response.model"] == "model-b"
    assert set(events(shadow)) == {"no-refusal", "says-days"}
    (upstream,) = await spans_named(tracer, exporter, "chat model-b")
    assert upstream.parent.span_id == shadow.context.span_id
    assert upstream.attributes["server.port"] == candidate_server.port  # the candidate's model server, not stable's
    received = await (await client.session.get(candidate_server.make_url("/debug/traceparents"))).json()
    assert_traceparent(received, upstream)


async def test_retrieval_is_a_child_span_and_each_answer_names_its_own_documents(make_plan, router_client, exporter) -> None:
    """Stable retrieves from index version v1, the candidate's shadow copy from v2: each span names what it was given."""
    tracer = tracer_for(exporter)
    plan = make_plan(shadow_percent=100, stable_extra={"retrieval": retrieval("v1")},
                     candidate_extra={"retrieval": retrieval("v2")})
    client = await router_client(plan, tracer=tracer)
    client.app[ROUTER].retriever = IndexedRetriever()
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"x-user-id": "u1"})
    assert resp.status == 200 and resp.headers["x-inferstack-retrieved"] == "kb-1"
    (request,) = await spans_named(tracer, exporter, "chat support")
    (shadow,) = await spans_named(tracer, exporter, "shadow support")
    assert list(request.attributes["inferstack.retrieved_ids"]) == ["kb-1"]
    assert list(shadow.attributes["inferstack.retrieved_ids"]) == ["kb-2"]  # the candidate's own documents
    retrieves = {s.attributes["inferstack.index_version"]: s for s in await spans_named(tracer, exporter, "retrieval kb", 2)}
    assert set(retrieves) == {"v1", "v2"}
    stable, candidate = retrieves["v1"], retrieves["v2"]
    assert stable.kind == SpanKind.INTERNAL and stable.parent.span_id == request.context.span_id
    assert candidate.parent.span_id == shadow.context.span_id and candidate.context.trace_id == request.context.trace_id
    assert (stable.attributes["inferstack.index"], stable.attributes["inferstack.top_k"]) == ("kb", 2)
    assert stable.attributes["gen_ai.request.model"] == "bge"  # the embedding model
    assert stable.attributes["gen_ai.operation.name"] == "retrieval"
    assert (stable.attributes["gen_ai.data_source.id"], candidate.attributes["gen_ai.data_source.id"]) == ("kb/v1", "kb/v2")
    assert list(stable.attributes["inferstack.retrieved_ids"]) == ["kb-1"]
    assert list(candidate.attributes["inferstack.retrieved_ids"]) == ["kb-2"]
    assert "postgresql://u@db/x" not in json.dumps([dict(s.attributes) for s in (stable, candidate, request, shadow)])


async def test_a_failed_retrieval_marks_its_span_and_the_request(make_plan, router_client, exporter) -> None:
    tracer = tracer_for(exporter)
    client = await router_client(make_plan(candidate=False, stable_extra={"retrieval": retrieval("v1")}), tracer=tracer)
    client.app[ROUTER].retriever = IndexedRetriever(fail="store_unreachable")
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 503
    (request,) = await spans_named(tracer, exporter, "chat support")
    (retrieve,) = await spans_named(tracer, exporter, "retrieval kb")
    assert retrieve.parent.span_id == request.context.span_id
    assert retrieve.attributes["error.type"] == request.attributes["error.type"] == "retrieval_failed"
    assert not retrieve.status.is_ok and not request.status.is_ok
    assert "inferstack.retrieved_ids" not in retrieve.attributes and "inferstack.retrieved_ids" not in request.attributes
    assert not await spans_named(tracer, exporter, "chat model-a", deadline=0)  # the model was not asked


async def test_feedback_lands_in_the_answers_trace(make_plan, router_client, exporter) -> None:
    tracer = tracer_for(exporter)
    settings = RouterSettings(upstream_timeout=5, feedback_keys=(b"k" * 32,))
    client = await router_client(make_plan(candidate=False, evaluation=EVALUATION), settings=settings, tracer=tracer)
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"x-inferstack-slice": "billing"})
    token = resp.headers["x-inferstack-response-id"]
    assert (await client.post("/v1/feedback", json={"response_id": token, "value": "down"})).status == 200
    (request,) = await spans_named(tracer, exporter, "chat support")
    (fb,) = await spans_named(tracer, exporter, "evaluate thumbs")
    assert fb.context.trace_id == request.context.trace_id and fb.parent.span_id == request.context.span_id
    assert fb.attributes["inferstack.slice"] == "billing" and fb.attributes["inferstack.evaluator.kind"] == "feedback"
    assert events(fb)["thumbs"]["gen_ai.evaluation.score.value"] == 0.0
    assert events(fb)["thumbs"]["gen_ai.evaluation.score.label"] == "down"


def test_response_ids_carry_the_trace_only_when_traced_and_it_is_signed() -> None:
    signer = Signer([b"s" * 32])
    labels = Labels("team-a", "support", "rev-a", "stable", "billing")
    traced = SpanContext(0x1234, 0x99, is_remote=False, trace_flags=TraceFlags(1))
    ref = signer.verify(signer.sign(labels, trace=traced) or "")
    assert (ref.trace_id, ref.span_id) == (0x1234, 0x99) and ref.span_context is not None
    plain = signer.verify(signer.sign(labels) or "")
    assert plain.trace_id == 0 and plain.span_context is None
    unsampled = SpanContext(0x1234, 0x99, is_remote=False, trace_flags=TraceFlags(0))
    assert signer.verify(signer.sign(labels, trace=unsampled) or "").trace_id == 0
    # A client cannot move feedback into another trace: the trace ids are under the MAC.
    import base64

    token = signer.sign(labels, trace=traced) or ""
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[-33] ^= 1  # the last byte of the span id
    forged = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    with pytest.raises(ValueError, match="not signed"):
        signer.verify(forged)


async def test_contents_only_where_the_stack_opts_in_and_never_for_a_tenant_that_opts_out(
    make_plan, router_client, exporter
) -> None:
    tracer = tracer_for(exporter)
    table, private = two_tenants()
    plan = make_plan(candidate=False, observability={"contentSampleRate": 1.0},
                     stable_extra={"systemPrompt": "You are the support assistant."})
    client = await router_client(plan, tracer=tracer, auth=Authenticator("api-keys", table))
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    assert (await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {private}"})).status == 200
    spans = await spans_named(tracer, exporter, "chat support", count=2)
    by_tenant = {s.attributes["inferstack.tenant"]: s.attributes for s in spans}
    recorded = json.loads(by_tenant["team-a/tests"]["gen_ai.input.messages"])
    assert recorded[0] == {"role": "system", "content": "You are the support assistant."}  # what the model received
    assert recorded[-1]["content"] == CHAT["messages"][0]["content"]
    assert json.loads(by_tenant["team-a/tests"]["gen_ai.output.messages"])[0]["role"] == "assistant"
    assert "gen_ai.input.messages" not in by_tenant["team-a/private"]
    assert "gen_ai.output.messages" not in by_tenant["team-a/private"]


def two_tenants() -> tuple[KeyTable, str]:
    """Keys of two tenants of team-a: ``tests`` (TEST_KEY) and ``private``, which opted out of content
    recording; and the private tenant's key."""
    table, private = KeyTable(), "isk_private-tenant-key"
    table.replace_all([
        ("team-a", "key-0", _secret(TEST_KEY, "tests")),
        ("team-a", "key-1", _secret(private, "private", recordContent="false")),
    ])  # fmt: skip
    return table, private


def _secret(key: str, tenant: str, **extra: str) -> dict[str, str]:
    import base64

    from inferstack.core.apikeys import key_digest

    fields = {"sha256": key_digest(key).hex(), "tenant": tenant, "stacks": "*", **extra}
    return {k: base64.b64encode(v.encode()).decode() for k, v in fields.items()}


async def audit_lines(capfd, count: int, deadline: float = 5.0) -> list[dict]:  # type: ignore[no-untyped-def]
    """The JSON lines the audit log wrote to stdout, once ``count`` of them are there (polled: a thread writes them)."""
    lines: list[dict] = []
    end = time.monotonic() + deadline
    while len(lines) < count and time.monotonic() < end:
        await asyncio.sleep(0.02)
        lines += [json.loads(x) for x in capfd.readouterr().out.splitlines() if x.startswith("{")]
    return lines


async def test_one_audit_line_per_request_and_per_feedback_on_stdout(make_plan, router_client, capfd) -> None:
    settings = RouterSettings(upstream_timeout=5, audit_log=True, feedback_keys=(b"k" * 32,))
    client = await router_client(make_plan(candidate=False, evaluation=EVALUATION), settings=settings)
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"x-inferstack-slice": "billing", "x-request-id": "req-1"})
    token = resp.headers["x-inferstack-response-id"]
    assert (await client.post("/v1/feedback", json={"response_id": token, "value": 1})).status == 200
    audit = client.app[ROUTER].audit
    lines = await audit_lines(capfd, 2)
    request, feedback = lines
    assert audit.written._value.get() == 2
    assert request["event"] == "request" and request["request_id"] == "req-1" and request["response_id"] == token
    assert (request["tenant"], request["stack"], request["revision"], request["slice"], request["status"]) == (
        "team-a/tests", "support", "rev-a", "billing", 200)
    assert request["prompt_hash"] == "hash-a" and request["output_tokens"] > 0 and request["latency_ms"] > 0
    assert set(request["evaluations"]) == {"no-refusal", "says-days"} and request["evaluations"]["no-refusal"] == 1.0
    assert "input_messages" not in request  # no opt-in: no contents
    assert feedback["event"] == "evaluation" and feedback["evaluator"] == "thumbs" and feedback["response_id"] == token
    assert TEST_KEY not in json.dumps(lines)


async def test_audit_lines_carry_contents_only_where_the_stack_opts_in_and_the_tenant_allows(
    make_plan, router_client, capfd
) -> None:
    table, private = two_tenants()
    settings = RouterSettings(upstream_timeout=5, audit_log=True)
    plan = make_plan(candidate=False, observability={"contentSampleRate": 1.0},
                     stable_extra={"systemPrompt": "You are the support assistant."})
    client = await router_client(plan, settings=settings, auth=Authenticator("api-keys", table))
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "allowed"})
    answer = (await resp.json())["choices"][0]["message"]["content"]
    headers = {"Authorization": f"Bearer {private}", "x-request-id": "refused"}
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=headers)).status == 200
    by_request = {line["request_id"]: line for line in await audit_lines(capfd, 2)}
    recorded = by_request["allowed"]
    assert recorded["input_messages"][0] == {"role": "system", "content": "You are the support assistant."}  # as the model got it
    assert recorded["input_messages"][-1] == CHAT["messages"][0]
    assert recorded["output_text"] == answer and answer
    assert "input_messages" not in by_request["refused"] and "output_text" not in by_request["refused"]
    assert TEST_KEY not in json.dumps(by_request) and private not in json.dumps(by_request)

    # The same tenant on a stack that did not opt in: no contents either.
    quiet = await router_client(make_plan(candidate=False), settings=settings, auth=Authenticator("api-keys", table))
    assert (await quiet.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "no-opt-in"})).status == 200
    (line,) = await audit_lines(capfd, 1)
    assert line["request_id"] == "no-opt-in" and "input_messages" not in line and "output_text" not in line


async def test_a_trusted_proxys_user_opts_out_through_the_proxys_header(make_plan, router_client, capfd) -> None:
    from inferstack.router.auth import parse_cidrs

    def proxy(content_header: str) -> Authenticator:  # the test client connects from 127.0.0.1
        return Authenticator("trusted-proxy", trusted_cidrs=parse_cidrs("127.0.0.0/8"), tenant_header="x-forwarded-user",
                             content_header=content_header)

    settings = RouterSettings(upstream_timeout=5, audit_log=True)
    plan = make_plan(candidate=False, observability={"contentSampleRate": 1.0})
    client = await router_client(plan, settings=settings, auth=proxy("x-record-content"), headers={})
    said = {"absent": None, "true": "True ", "false": "false", "no": "no", "empty": ""}
    for request_id, value in said.items():
        headers = {"x-forwarded-user": "alice", "x-request-id": request_id}
        if value is not None:
            headers["x-record-content"] = value
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=headers)).status == 200
    by_request = {line["request_id"]: line for line in await audit_lines(capfd, len(said))}
    # As a key Secret's recordContent: absent leaves it to the stack, a clear "true" allows, anything else opts out.
    assert {r for r, line in by_request.items() if "input_messages" in line} == {"absent", "true"}

    # Without --trusted-proxy-record-content-header the header means nothing: the stack decides.
    unset = await router_client(plan, settings=settings, auth=proxy(""), headers={})
    headers = {"x-forwarded-user": "alice", "x-request-id": "unset", "x-record-content": "false"}
    assert (await unset.post("/v1/chat/completions", json=CHAT, headers=headers)).status == 200
    (line,) = await audit_lines(capfd, 1)
    assert line["request_id"] == "unset" and "input_messages" in line
