"""A marker token through every error path the router has: it is in no log line, no response body, no header.

The router runs as a process with DEBUG logs (everything it would ever log).
Plans carry the marker as their endpoint token (the file source takes
``apiKey`` from the file, as the Kubernetes source fills it from a Secret);
fake model servers on loopback echo the Authorization header in 5xx and 4xx
bodies, hang past the timeout, or break a stream; one plan points at a port
nobody listens on; malformed plans carry the marker where pydantic would quote
it; invalid requests carry it in headers and bodies. The router writes its audit
log (to the same log) and exports a trace of every request to an OTLP receiver
here: neither may carry the marker either.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from .harness import Processes, wait_until

pytestmark = pytest.mark.timeout(90)

MARKER = "sk-MARKER-7f3c1d9e2b"


def stack(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "stack": name, "namespace": "team-a", "serial": 1,
        "stable": {"revision": f"{name}-r1", "url": url, "servedModel": "model-a", "cacheNamespace": f"team-a.{name}.r1",
                   "apiKey": MARKER, "apiKeySecretRef": {"name": "endpoint-token", "key": "token"}},
        **extra,
    }


EXPORTED: list[bytes] = []  # OTLP trace exports the router sent (protobuf bodies)


async def fake_model_server() -> tuple[web.AppRunner, str]:
    """Model servers that fail in every way, each echoing what it was sent."""

    async def echo_5xx(request: web.Request) -> web.Response:
        return web.json_response({"error": "boom", "headers": dict(request.headers), "body": await request.text()}, status=500)

    async def echo_401(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": f"Incorrect API key: {request.headers.get('Authorization')}"}},
                                 status=401)

    async def traces(request: web.Request) -> web.Response:
        EXPORTED.append(await request.read())
        return web.Response(content_type="application/x-protobuf")

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.json_response({})

    async def broken_stream(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        await out.write(b'data: {"choices": [{"index": 0, "delta": {"content": "Hel')  # a partial event, then it drops
        assert request.transport is not None
        request.transport.abort()
        return out

    app = web.Application()
    for name, handler in (("echo5xx", echo_5xx), ("echo401", echo_401), ("hang", hang), ("broken", broken_stream)):
        app.router.add_post(f"/{name}/v1/chat/completions", handler)
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner, f"http://127.0.0.1:{port}"


async def test_marker_token_reaches_no_log_and_no_response(procs: Processes, tmp_path: Path) -> None:
    runner, fake = await fake_model_server()
    try:
        good = procs.standin("model-a")
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
        plans = tmp_path / "plans"
        plans.mkdir()
        for name in ("echo5xx", "echo401", "hang", "broken"):
            (plans / f"{name}.json").write_text(json.dumps(stack(name, f"{fake}/{name}")))
        (plans / "refused.json").write_text(json.dumps(stack("refused", f"http://127.0.0.1:{closed.getsockname()[1]}")))
        shadowed = stack("shadowed", good.url, shadowPercent=100)
        shadowed["stable"].pop("apiKey"), shadowed["stable"].pop("apiKeySecretRef")
        shadowed["candidate"] = {**stack("x", f"{fake}/echo5xx")["stable"], "revision": "shadowed-r2"}
        (plans / "shadowed.json").write_text(json.dumps(shadowed))
        # Malformed plans, each with the marker where a validation error would quote its input.
        (plans / "bad-json.json").write_text('{"stack": "bad1", "stable": {"apiKey": "' + MARKER + '"')
        bad = stack("bad2", good.url)
        bad["stable"]["apiKey"] = [MARKER]
        (plans / "bad-type.json").write_text(json.dumps(bad))
        bad = stack("bad3", good.url)
        bad["stable"]["url"] = MARKER
        bad["stable"]["tokenn"] = MARKER
        (plans / "bad-field.json").write_text(json.dumps(bad))
        bad = stack("bad4", good.url, serial=f"serial-{MARKER}")
        (plans / "bad-serial.json").write_text(json.dumps(bad))
        (plans / "bad-whole.json").write_text(json.dumps(MARKER))
        missing = stack("bad5", good.url)
        missing["stable"].pop("apiKey")  # its Secret could not be read
        (plans / "missing-secret.json").write_text(json.dumps(missing))

        router = procs.router(plans, "--log-level", "DEBUG", "--upstream-timeout", "1", "--audit-log",
                              "--otlp-endpoint", fake, "--trace-sample-rate", "1")
        seen: list[str] = []  # every status line, header and body the router answered

        async def call(session: aiohttp.ClientSession, path: str, body: Any = None, data: bytes | None = None,
                       headers: dict[str, str] | None = None) -> int:
            async with session.post(router.url + path, json=body if data is None else None, data=data,
                                    headers={**router.auth, **(headers or {})}) as resp:
                seen.append(f"{resp.status} {resp.reason}")
                seen.extend(f"{k}: {v}" for k, v in resp.headers.items())
                seen.append(await resp.text())
                return resp.status

        question = [{"role": "user", "content": "Where is my parcel?"}]
        async with aiohttp.ClientSession() as session:
            assert await call(session, "/v1/chat/completions", {"model": "echo5xx", "messages": question}) == 502
            assert await call(session, "/v1/chat/completions", {"model": "echo5xx", "messages": question, "stream": True}) == 502
            assert await call(session, "/v1/chat/completions", {"model": "echo401", "messages": question}) == 401
            assert await call(session, "/v1/chat/completions", {"model": "hang", "messages": question}) == 504
            assert await call(session, "/v1/chat/completions", {"model": "refused", "messages": question}) == 502
            assert await call(session, "/v1/chat/completions", {"model": "broken", "messages": question, "stream": True}) == 200
            assert await call(session, "/v1/chat/completions", {"model": "broken", "messages": question}) == 502
            assert await call(session, "/v1/chat/completions", {"model": "shadowed", "messages": question}) == 200
            for bad_stack in ("bad1", "bad2", "bad3", "bad4", "bad5"):
                assert await call(session, "/v1/chat/completions", {"model": bad_stack, "messages": question}) == 404
            # Invalid requests carrying the marker in headers and bodies.
            assert await call(session, "/v1/chat/completions", {"model": "echo5xx", "messages": question},
                              headers={"Authorization": f"Bearer {MARKER}"}) == 401
            secret_headers = {"x-api-key": MARKER, "Cookie": f"session={MARKER}", "x-request-id": "r-1",
                              "x-user-id": MARKER, "x-tenant-id": MARKER, "x-inferstack-slice": MARKER}
            for body in ({"model": "echo5xx", "messages": MARKER}, {"model": "echo5xx", "messages": [{"role": MARKER, "content": "x"}]},
                         {"model": "echo5xx", "messages": [{"role": "user", "content": {MARKER: 1}}]},
                         {"model": "echo5xx", "messages": question, "max_tokens": MARKER},
                         {"model": "echo5xx", "messages": question, "stop": [MARKER, 3]},
                         {"model": "echo5xx", "messages": question, "user": [MARKER]},
                         {"model": "echo5xx", "messages": question, "temperature": MARKER}):
                assert await call(session, "/v1/chat/completions", body, headers=secret_headers) == 400
            assert await call(session, "/v1/completions", {"model": "echo5xx", "prompt": {MARKER: MARKER}}, headers=secret_headers) == 400
            assert await call(session, "/v1/chat/completions", data=f'{{"model": "{MARKER}"'.encode(), headers=secret_headers) == 400
            assert await call(session, "/v1/chat/completions", data=b"[" * 100 + MARKER.encode(), headers=secret_headers) == 400
            assert await call(session, "/v1/chat/completions", data=MARKER.encode() * 450_000, headers=secret_headers) == 413
            assert await call(session, f"/v1/{MARKER}", {"model": MARKER}, headers=secret_headers) == 404
            assert await call(session, "/v1/feedback", {"response_id": MARKER, "value": MARKER}, headers=secret_headers) == 400

        log = tmp_path / f"router-{router.port}.log"
        # The shadow's failure is counted once its mirror has run; every plan file has been judged.
        wait_until("shadow mirror and plan rejections logged",
                   lambda: "rejected plan file" in log.read_text() and log.read_text().count("rejected plan file") >= 6)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(procs.stop_all)  # the router flushes its traces on the way out, to this receiver
    finally:
        await runner.cleanup()
        closed.close()
    text = log.read_text()
    # The failures were logged (with details), just never the token.
    assert text.count("rejected plan file") >= 6, text
    for kind in ("upstream_5xx", "timeout", "connect", "upstream_disconnect"):
        assert kind in text, kind
    assert "HTTP 500" in text and "<redacted>" in text  # the echoing body is there, its token redacted
    audit = [json.loads(line) for line in text.splitlines() if line.startswith('{"event"')]
    assert len([a for a in audit if a["event"] == "request"]) >= 8, audit  # every routed request has its line
    assert EXPORTED and sum(len(b) for b in EXPORTED) > 1000  # traces were exported (flushed at shutdown)
    assert not [b for b in EXPORTED if MARKER.encode() in b]
    leaked = [line for line in text.splitlines() if MARKER in line]
    assert not leaked, leaked
    leaked = [line for line in seen if MARKER in line]
    assert not leaked, leaked
    # Clients get the request id to quote, not the model server's words nor its address.
    assert any("request id" in line for line in seen)
    assert not any("127.0.0.1" in line for line in seen)
