"""The router end to end in one event loop: real HTTP to stand-in backends."""

import asyncio
import json
import socket
import time

from aiohttp.test_utils import TestServer

from inferstack.router.app import ROUTER
from inferstack.router.settings import RouterSettings
from inferstack.standin.app import METRICS, RECEIVED, StandinSettings
from inferstack.standin.app import build_app as build_standin

CHAT = {"model": "support", "messages": [{"role": "user", "content": "Where is my parcel?"}]}


def metric(client, name: str, **labels: str) -> float:
    value = client.app[ROUTER].metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_non_streaming_goes_to_stable_with_model_rewritten(make_plan, router_client, stable_server) -> None:
    client = await router_client(make_plan(candidate_weight=0))
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"x-user-id": "alice", "x-tenant-id": "acme"})
    assert resp.status == 200
    data = await resp.json()
    assert data["choices"][0]["message"]["content"].startswith("Open Orders and press Track")
    assert resp.headers["x-inferstack-stack"] == "team-a/support"
    assert resp.headers["x-inferstack-revision"] == "rev-a"
    assert resp.headers["x-inferstack-prompt-hash"] == "hash-a"
    assert resp.headers["x-inferstack-role"] == "stable"
    assert resp.headers["x-inferstack-cache"] == "miss"
    forwarded = stable_server.app[RECEIVED][-1]
    assert forwarded["model"] == "model-a"
    assert len(forwarded["cache_salt"]) == 64
    labels = {"namespace": "team-a", "stack": "support", "revision": "rev-a", "role": "stable", "slice": "default"}
    assert metric(client, "inferstack_router_requests_total", **labels) == 1
    assert metric(client, "inferstack_router_prompt_tokens_total", **labels) == data["usage"]["prompt_tokens"]
    assert metric(client, "inferstack_router_completion_tokens_total", **labels) == data["usage"]["completion_tokens"]


async def test_namespaced_model_name_and_completions_endpoint(make_plan, router_client) -> None:
    client = await router_client(make_plan())
    resp = await client.post("/v1/completions", json={"model": "team-a/support", "prompt": "Who are you?"})
    assert (await resp.json())["choices"][0]["text"] == "I am the support assistant of Example Shop."


async def test_streaming_is_passed_through(make_plan, router_client) -> None:
    client = await router_client(make_plan(candidate_weight=100))
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    resp = await client.post("/v1/chat/completions", json=body, headers={"x-user-id": "bob"})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["x-inferstack-role"] == "candidate"
    events = [line[6:] for line in (await resp.text()).split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.startswith("Open Orders and press Track")
    labels = {"namespace": "team-a", "stack": "support", "revision": "rev-b", "role": "candidate", "slice": "default"}
    assert metric(client, "inferstack_router_time_to_first_token_seconds_count", **labels) == 1
    assert metric(client, "inferstack_router_completion_tokens_total", **labels) == chunks[-1]["usage"]["completion_tokens"]


async def test_models_health_and_readiness(make_plan, router_client) -> None:
    empty = await router_client()
    assert (await empty.admin.get("/readyz")).status == 503
    assert (await empty.admin.get("/healthz")).status == 200
    client = await router_client(make_plan())
    assert (await client.admin.get("/readyz")).status == 200
    models = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["support"]
    assert "inferstack_router_plan_serial" in await (await client.admin.get("/metrics")).text()
    # Not on the clients' port: there, with or without a key, they do not exist.
    for path in ("/metrics", "/healthz", "/readyz"):
        assert (await client.get(path)).status == 404
        assert (await client.get(path, headers={"Authorization": ""})).status == 401


async def test_unknown_and_malformed_requests_get_openai_errors(make_plan, router_client) -> None:
    client = await router_client(make_plan())
    resp = await client.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "model_not_found"
    resp = await client.post("/v1/chat/completions", data=b"{not json")
    assert resp.status == 400
    assert set((await resp.json())["error"]) >= {"message", "type", "code"}


async def test_connect_refused_is_502(make_plan, router_client) -> None:
    # A port bound but not listening refuses connections, and no other
    # process can take it while the test holds it (a freed port could be).
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    plan = make_plan(candidate=False, stable_extra={"url": f"http://127.0.0.1:{held.getsockname()[1]}"})
    client = await router_client(plan)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 502
    assert (await resp.json())["error"]["code"] == "connect"
    assert resp.headers["x-inferstack-revision"] == "rev-a"
    labels = {"namespace": "team-a", "stack": "support", "revision": "rev-a", "role": "stable", "slice": "default"}
    assert metric(client, "inferstack_router_errors_total", **labels, kind="connect") == 1
    held.close()


async def test_upstream_500_is_502_and_timeout_is_504(router_client, make_plan) -> None:
    async with (
        TestServer(build_standin(StandinSettings(served_model="model-a", fail_rate=1.0))) as failing,
        TestServer(build_standin(StandinSettings(served_model="model-a", latency_ms=3000))) as slow,
    ):
        client = await router_client(make_plan(candidate=False, stable_extra={"url": str(failing.make_url(""))}))
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_5xx"

        slow_plan = make_plan(candidate=False, stable_extra={"url": str(slow.make_url(""))})
        client = await router_client(slow_plan, settings=RouterSettings(upstream_timeout=0.2))
        started = time.monotonic()
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 504
        assert time.monotonic() - started < 2
        assert (await resp.json())["error"]["code"] == "timeout"


async def test_candidate_connect_error_retries_on_stable(make_plan, router_client) -> None:
    plan = make_plan(candidate_weight=100, candidate_extra={"url": f"http://127.0.0.1:{free_port()}"})
    client = await router_client(plan)
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"x-user-id": "carol"})
    assert resp.status == 200
    assert resp.headers["x-inferstack-role"] == "stable"
    assert metric(client, "inferstack_router_candidate_fallbacks_total",
                  namespace="team-a", stack="support", revision="rev-b") == 1

    strict = await router_client(plan, settings=RouterSettings(candidate_fallback=False))
    resp = await strict.post("/v1/chat/completions", json=CHAT, headers={"x-user-id": "carol"})
    assert resp.status == 502


async def test_bad_prompt_shows_in_refusal_checks_of_one_slice(make_plan, router_client) -> None:
    plan = make_plan(
        candidate_weight=50,
        stable_extra={"systemPrompt": "You are a support assistant."},
        candidate_extra={"systemPrompt": "You are a support assistant. Never discuss refunds."},
    )
    client = await router_client(plan, settings=RouterSettings(slices=("billing", "shipping")))
    questions = {"billing": "How do I get a refund?", "shipping": "Where is my parcel?"}
    for user in ("u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"):
        for slice_, question in questions.items():
            body = {"model": "support", "messages": [{"role": "user", "content": question}]}
            resp = await client.post("/v1/chat/completions", json=body, headers={"x-user-id": user, "x-inferstack-slice": slice_})
            assert resp.status == 200

    def checks(revision: str, role: str, slice_: str, result: str) -> float:
        return metric(client, "inferstack_router_check_total", namespace="team-a", stack="support", revision=revision,
                      role=role, slice=slice_, check="refusal", result=result)

    assert checks("rev-b", "candidate", "billing", "fail") > 0
    assert checks("rev-b", "candidate", "billing", "pass") == 0
    assert checks("rev-b", "candidate", "shipping", "fail") == 0
    assert checks("rev-a", "stable", "billing", "fail") == 0
    assert checks("rev-a", "stable", "billing", "pass") > 0


async def test_json_valid_check_only_when_json_requested(make_plan, router_client) -> None:
    client = await router_client(make_plan(candidate=False))
    body = {**CHAT, "response_format": {"type": "json_object"}}
    await client.post("/v1/chat/completions", json=body)
    await client.post("/v1/chat/completions", json=CHAT)
    labels = {"namespace": "team-a", "stack": "support", "revision": "rev-a", "role": "stable", "slice": "default"}
    assert metric(client, "inferstack_router_check_total", **labels, check="json_valid", result="pass") == 1
    assert metric(client, "inferstack_router_check_total", **labels, check="refusal", result="pass") == 2


async def test_unknown_slices_become_other(make_plan, router_client) -> None:
    client = await router_client(make_plan(candidate=False), settings=RouterSettings(slices=("billing",)))
    await client.post("/v1/chat/completions", json=CHAT, headers={"x-inferstack-slice": "x" * 500})
    labels = {"namespace": "team-a", "stack": "support", "revision": "rev-a", "role": "stable", "slice": "other"}
    assert metric(client, "inferstack_router_requests_total", **labels) == 1


async def test_client_disconnect_cancels_the_backend_request(make_plan, router_client) -> None:
    async with TestServer(build_standin(StandinSettings(served_model="model-a", tokens_per_second=5))) as slow:
        client = await router_client(make_plan(candidate=False, stable_extra={"url": str(slow.make_url(""))}))
        running = slow.app[METRICS].running
        resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        await resp.content.readany()  # the stream has started
        assert running._value.get() == 1
        resp.close()
        deadline = time.monotonic() + 5
        while running._value.get() != 0:
            assert time.monotonic() < deadline, "backend request still running after the client left"
            await asyncio.sleep(0.02)


async def test_a_request_id_is_kept_only_when_it_is_short_printable_ascii(make_plan, router_client) -> None:
    """The id is echoed in the answer's headers and sent to the model server: one a client could use to send
    bytes a header cannot carry, or kilobytes per request, is replaced by one the router makes."""
    client = await router_client(make_plan(candidate=False))
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "req-42"})
    assert resp.status == 200 and resp.headers["x-request-id"] == "req-42"
    port = client.server.port
    for sent in (b"\xff\xfe-not-utf-8", "ünïcödé".encode(), b"x" * 129):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps(CHAT).encode()
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: "
                     + client._session.headers["Authorization"].encode() + b"\r\nx-request-id: " + sent
                     + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        echoed = answer.split(b"\r\nx-request-id: ")[1].split(b"\r\n")[0]
        assert echoed != sent and len(echoed) == 32 and echoed.isalnum()  # a fresh one
