"""The router's HTTP/1.1 server (router/server.py) against hostile and unusual clients, over real sockets."""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from inferstack.router import server as srv
from inferstack.router.server import BodyError, BodyTooLarge, HTTPServer, Request, Response, StreamResponse

pytestmark = pytest.mark.timeout(30)

SECRET = b"isk_MARKER-0b7e-never-in-a-log-or-an-answer"


class Served:
    """A server on a free port, and what its handler saw."""

    def __init__(self, server: HTTPServer, listener: asyncio.AbstractServer) -> None:
        self.server = server
        self.listener = listener
        self.port = listener.sockets[0].getsockname()[1]
        self.seen: list[Request] = []
        self.cancelled = 0


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    started: list[Served] = []

    async def start(handler: Callable[[Request], Awaitable[Response | StreamResponse]] | None = None,
                    **options: float) -> Served:
        served: Served

        async def default(request: Request) -> Response:
            served.seen.append(request)
            try:
                body = await request.read(1024)
            except BodyTooLarge:
                return Response(b"too large", 413)
            except BodyError:
                return Response(b"undecodable", 400)
            return Response(b"%s %s %d" % (request.method.encode(), request.path.encode(), len(body)))

        async def wrapped(request: Request) -> Response | StreamResponse:
            served.seen.append(request)
            try:
                assert handler is not None
                return await handler(request)
            except asyncio.CancelledError:
                served.cancelled += 1
                raise

        http = HTTPServer(wrapped if handler is not None else default, max_body=int(options.pop("max_body", 4096)),
                          **options)
        listener = await asyncio.get_running_loop().create_server(http, "127.0.0.1", 0)
        served = Served(http, listener)
        started.append(served)
        return served

    yield start
    for served in started:
        served.listener.close()
        await served.server.shutdown(0.1)


async def exchange(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Write ``data``, then read until the server closes (or ``timeout``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def statuses(answer: bytes) -> list[int]:
    """The status of each answer in ``answer`` (several, when pipelined: each right after the body before)."""
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]


async def test_pipelined_requests_get_one_answer_each_in_order(serve) -> None:
    served = await serve()
    requests = b"".join(b"POST /r%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (i, i, b"x" * i)
                        for i in range(1, 4))
    answer = await exchange(served.port, requests + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(answer) == [200, 200, 200, 200]
    bodies = [part.split(b"\r\n\r\n", 1)[1] for part in answer.split(b"HTTP/1.1 ")[1:]]
    assert bodies == [b"POST /r1 1", b"POST /r2 2", b"POST /r3 3", b"GET /last 0"]


async def test_keep_alive_serves_several_requests_on_one_connection(serve) -> None:
    served = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        for _ in range(3):
            writer.write(b"POST /k HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Date: " in head
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            assert await reader.readexactly(length) == b"POST /k 2"
        assert len(served.server.connections) == 1
    finally:
        writer.close()


@pytest.mark.parametrize(("head", "status"), [
    (b"POST /x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + SECRET + b"\x01\r\n\r\n", 400),  # control character
    (b"POST /x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + SECRET + b"k" * 9000 + b"\r\n\r\n", 400),  # line too long
    (b"POST /x HTTP/1.1\r\nHost: x\r\n" + b"".join(b"x-%d: v\r\n" % i for i in range(200)) + b"\r\n", 431),
    (b"POST /x HTTP/1.1\r\nHost: x\r\n" + b"".join(b"x-%d: %s\r\n" % (i, b"v" * 8000) for i in range(120)), 431),  # 960 KB
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n{}", 417),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),  # smuggling
    (b"NOT-HTTP\r\n\r\n", 400),
])
async def test_malformed_requests_are_refused_in_plain_text_quoting_nothing(serve, caplog, head, status) -> None:
    caplog.set_level(logging.DEBUG)
    served = await serve()
    answer = await exchange(served.port, head)
    assert statuses(answer) == [status], answer[:300]
    assert b"Connection: close" in answer and b"text/plain" in answer
    assert SECRET not in answer and SECRET.decode() not in caplog.text
    assert "refused a malformed HTTP request" in caplog.text
    assert not served.seen  # no handler ran


async def test_a_transfer_encoding_that_is_not_chunked_is_a_400_and_the_body_never_read(serve) -> None:
    """RFC 9112 6.3: the body's length cannot be known. The parser stops at it; the handler reading it gets an error."""
    served = await serve()
    answer = await exchange(served.port, b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{}")
    assert statuses(answer) == [400] and b"Connection: close" in answer


async def test_an_upgrade_is_ignored_the_request_answered_and_the_connection_closed(serve) -> None:
    served = await serve()
    answer = await exchange(served.port, b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert statuses(answer) == [200] and b"Connection: close" in answer and b"101" not in answer


async def test_a_head_not_received_in_time_is_a_408(serve) -> None:
    served = await serve(head_timeout=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(b"POST /slow HTTP/1.1\r\nHost: x\r\nx-trickle: ")  # and never the rest
        answer = await asyncio.wait_for(reader.read(), srv.SWEEP + 5)
    finally:
        writer.close()
    assert statuses(answer) == [408]


async def test_an_idle_keep_alive_connection_is_closed(serve) -> None:
    served = await serve(keepalive=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(b"GET /once HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"GET /once 0"), 5)
        assert await asyncio.wait_for(reader.read(), srv.SWEEP + 5) == b""  # closed by the server
    finally:
        writer.close()


async def test_expect_continue_is_answered_when_the_body_is_read(serve) -> None:
    served = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert statuses(answer) == [200] and answer.endswith(b"POST /e 5")


async def test_a_refusal_before_the_body_is_read_reaches_the_client_whole(serve) -> None:
    """The answer goes out while the client still sends its body: the server lingers, reading and dropping it,
    so the kernel sends no reset that would destroy the answer."""

    async def refuse(request: Request) -> Response:
        return Response(b"no key", 401)

    served = await serve(refuse, max_body=64 * 1024 * 1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (32 * 1024 * 1024))
        for _ in range(64):
            writer.write(b"x" * (256 * 1024))  # 16 MiB of the 32 announced, while the answer is written
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), srv.LINGER + srv.SWEEP + 5)
    finally:
        writer.close()
    assert statuses(answer) == [401] and answer.endswith(b"no key") and b"Connection: close" in answer


async def test_a_body_past_the_limit_is_not_kept(serve) -> None:
    served = await serve(max_body=1000)
    chunked = b"".join(b"100\r\n" + b"x" * 256 + b"\r\n" for _ in range(40)) + b"0\r\n\r\n"
    answer = await exchange(served.port, b"POST /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
                            + chunked)
    assert statuses(answer) == [413]
    request = served.seen[0]
    assert request._too_large and not request._chunks  # nothing past the limit was kept
    answer = await exchange(served.port, b"POST /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5000\r\n\r\n"
                            + b"x" * 5000)
    assert statuses(answer) == [413]


@pytest.mark.parametrize(("encoding", "data", "expected"), [
    ("gzip", gzip.compress(b'{"a": 1}', mtime=0), b"8"),
    ("deflate", zlib.compress(b'{"a": 1}'), b"8"),
    ("deflate", zlib.compress(b'{"a": 1}')[2:-4], b"8"),  # raw deflate, as some clients send it
    ("identity", b'{"a": 1}', b"8"),
    ("gzip", b"not gzip at all", b"undecodable"),
    ("gzip", gzip.compress(b'{"a": 1}', mtime=0)[:-6], b"undecodable"),  # cut short
    ("br", b"\x0b\x02\x80{}\x03", b"undecodable"),
    ("gzip", gzip.compress(b"0" * 10_000_000, mtime=0), b"too large"),  # 10 MB from ~10 KB: never inflated whole
], ids=["gzip", "deflate", "raw-deflate", "identity", "not-gzip", "gzip-cut-short", "br", "gzip-bomb"])
async def test_bodies_are_decoded_by_their_content_encoding_within_the_limit(serve, encoding, data, expected) -> None:
    served = await serve()
    head = b"POST /z HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n"
    answer = await exchange(served.port, head % (encoding.encode(), len(data)) + data)
    assert answer.endswith(expected if expected[:1].isalpha() else b"POST /z " + expected), answer[-100:]


async def test_a_client_that_goes_away_cancels_its_handler(serve) -> None:
    started = asyncio.Event()

    async def forever(request: Request) -> Response:
        started.set()
        await asyncio.sleep(3600)
        return Response(b"never")

    served = await serve(forever)
    _reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(started.wait(), 5)
    writer.close()
    deadline = asyncio.get_running_loop().time() + 5
    while served.cancelled == 0:
        assert asyncio.get_running_loop().time() < deadline, "the handler was not cancelled"
        await asyncio.sleep(0.01)


async def test_a_stream_is_chunked_and_waits_for_a_slow_reader(serve) -> None:
    async def stream(request: Request) -> StreamResponse:
        out = StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for i in range(400):
            await out.write(b"data: %d %s\n\n" % (i, b"x" * 32_000))  # 12.8 MB: more than the sockets' buffers hold
        await out.write_eof()
        return out

    served = await serve(stream)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(b"GET /s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await asyncio.sleep(0.2)  # a reader that is behind: the handler waits (writing_paused), buffers no more
        assert served.server.connections and next(iter(served.server.connections)).writing_paused
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding: chunked" in head and body.endswith(b"0\r\n\r\n")
    assert body.count(b"data: ") == 400


async def test_a_header_with_a_line_break_is_never_written(serve, caplog) -> None:
    async def inject(request: Request) -> Response:
        return Response(b"x", headers={"x-echo": "a\r\nSet-Cookie: evil=1"})

    served = await serve(inject, internal_error=lambda: Response(b"internal", 500))
    answer = await exchange(served.port, b"GET /i HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(answer) == [500] and b"evil" not in answer


async def test_shutdown_lets_an_answer_in_flight_finish_and_closes_idle_connections(serve) -> None:
    release = asyncio.Event()

    async def slow(request: Request) -> Response:
        await release.wait()
        return Response(b"done")

    served = await serve(slow)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", served.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    deadline = asyncio.get_running_loop().time() + 5
    while not served.seen:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    served.listener.close()
    stopping = asyncio.create_task(served.server.shutdown(5))
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # the idle one is closed at once
    release.set()
    answer = await asyncio.wait_for(reader.read(), 5)
    await stopping
    assert statuses(answer) == [200] and answer.endswith(b"done") and b"Connection: close" in answer
    idle_writer.close()
    writer.close()


async def test_a_held_head_goes_out_alone_on_an_empty_write_and_with_the_first_chunk_otherwise(serve) -> None:
    """``hold`` keeps the head for the first chunk (one write); ``write(b"")`` sends it at once (no token yet)."""
    first_chunk = asyncio.Event()

    async def stream(request: Request) -> StreamResponse:
        out = StreamResponse(headers={"Content-Type": "text/event-stream"})
        out.hold(request)
        if request.path == "/now":
            await out.write(b"")
        await first_chunk.wait()
        await out.write(b"data: 1\n\n")
        await out.write_eof()
        return out

    served = await serve(stream)
    for path in ("/now", "/held"):
        first_chunk.clear()
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        try:
            writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
            if path == "/now":
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # before any chunk
                assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" in head
            else:
                with pytest.raises(TimeoutError):  # nothing until the first chunk
                    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.3)
            first_chunk.set()
            rest = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
        assert rest.endswith(b"9\r\ndata: 1\n\n\r\n0\r\n\r\n")
