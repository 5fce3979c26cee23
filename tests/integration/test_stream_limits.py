"""Concurrent streams and slow clients, on real sockets: a 429 past --max-concurrent-streams, and a client
that stops reading is disconnected, counted, and its model-server request closed (vLLM aborts the generation)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from .harness import Processes

pytestmark = pytest.mark.timeout(60)

QUESTION = [{"role": "user", "content": "Tell me everything."}]


@dataclass
class Upstream:
    """A model server whose streams never end: ``held`` trickles, ``flood`` writes as fast as it is read."""

    url: str = ""
    started: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)  # streams whose connection the router closed


async def serve_upstream() -> AsyncIterator[Upstream]:
    state = Upstream()

    async def stream(request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        body = await request.json()
        if not body.get("stream"):
            return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]})
        state.started.append(kind)
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        text = "x" * (8192 if kind == "flood" else 16)
        event = b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}).encode() + b"\n\n"
        try:
            while True:
                await out.write(event)
                await asyncio.sleep(0 if kind == "flood" else 0.05)
        except ConnectionError:
            state.closed.append(kind)
            return out
        except asyncio.CancelledError:
            state.closed.append(kind)
            raise

    app = web.Application()
    app.router.add_post("/{kind}/v1/chat/completions", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async for state in serve_upstream():
        yield state


def plans(tmp_path: Path, upstream: Upstream) -> Path:
    folder = tmp_path / "plans"
    folder.mkdir()
    for kind in ("held", "flood"):
        (folder / f"{kind}.json").write_text(json.dumps({
            "stack": kind, "namespace": "team-a", "serial": 1,
            "stable": {"revision": f"{kind}-r1", "url": f"{upstream.url}/{kind}", "servedModel": "m",
                       "cacheNamespace": f"team-a.{kind}.r1"},
        }))
    return folder


async def until(what: str, check, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def metric(url: str, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_streams_past_the_cap_get_429_before_anything_is_forwarded(procs: Processes, upstream: Upstream,
                                                                        tmp_path: Path) -> None:
    router = procs.router(plans(tmp_path, upstream), "--max-concurrent-streams", "3")
    body = {"model": "held", "messages": QUESTION, "stream": True}
    async with aiohttp.ClientSession(headers=router.auth) as session:
        open_streams = []
        for _ in range(3):
            resp = await session.post(router.url + "/v1/chat/completions", json=body)
            assert resp.status == 200
            assert (await resp.content.readline()).startswith(b"data: ")
            open_streams.append(resp)
        assert len(upstream.started) == 3
        async with session.post(router.url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "1"
            error = (await resp.json())["error"]
            assert (error["code"], error["type"]) == ("rate_limit_exceeded", "rate_limit_error")
        assert len(upstream.started) == 3  # the refused stream reached no model server
        assert await metric(router.metrics_url, "inferstack_router_streams_refused_total") == 1
        # Non-streamed requests are not streams: still served.
        async with session.post(router.url + "/v1/chat/completions", json={**body, "stream": False}) as resp:
            assert resp.status == 200
        # A stream that ends frees its slot.
        open_streams.pop().close()
        await until("the closed stream's upstream request closed", lambda: upstream.closed.count("held") == 1)
        deadline = time.monotonic() + 10
        while True:
            resp = await session.post(router.url + "/v1/chat/completions", json=body)
            if resp.status == 200:
                open_streams.append(resp)
                break
            assert resp.status == 429 and time.monotonic() < deadline
            resp.close()
            await asyncio.sleep(0.05)
        for resp in open_streams:
            resp.close()
    await until("every upstream request closed", lambda: len(upstream.closed) == len(upstream.started))


async def test_a_client_that_stops_reading_is_disconnected_and_its_generation_aborted(
    procs: Processes, upstream: Upstream, tmp_path: Path
) -> None:
    router = procs.router(plans(tmp_path, upstream), "--stream-write-timeout", "1", "--max-concurrent-streams", "2")
    host, port = "127.0.0.1", router.port
    request = json.dumps({"model": "flood", "messages": QUESTION, "stream": True}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, and then never read
    sock.connect((host, port))
    headers = "".join(f"{k}: {v}\r\n" for k, v in router.auth.items())
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(request)}\r\n{headers}\r\n".encode() + request)
    try:
        await until("the flood started", lambda: upstream.started == ["flood"])
        labels = {"stack": "flood", "revision": "flood-r1", "role": "stable", "kind": "client_timeout"}
        deadline = time.monotonic() + 20
        while await metric(router.metrics_url, "inferstack_router_errors_total", **labels) != 1:
            assert time.monotonic() < deadline, "the slow client was not disconnected"
            await asyncio.sleep(0.1)
        # The router closed the model server's request: a real vLLM aborts the generation here.
        await until("the upstream request closed", lambda: upstream.closed == ["flood"])
        # And the client's connection is gone: reading drains what was buffered, then hits the end.
        sock.settimeout(10)
        with pytest.raises(OSError):
            while sock.recv(1 << 20):
                pass
            raise ConnectionResetError("closed")
    finally:
        sock.close()
    # Its stream slot is free again: two more streams fit under a cap of two.
    async with aiohttp.ClientSession(headers=router.auth) as session:
        held = {"model": "held", "messages": QUESTION, "stream": True}
        first = await session.post(router.url + "/v1/chat/completions", json=held)
        second = await session.post(router.url + "/v1/chat/completions", json=held)
        assert (first.status, second.status) == (200, 200)
        first.close()
        second.close()
