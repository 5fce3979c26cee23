"""The router's upstream HTTP/1.1 client against a scripted raw-socket server: framing, keep-alive, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from yarl import URL

from inferstack.router.errors import classify
from inferstack.router.upstream import UpstreamClient

TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=2)
BODY = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'


class Script:
    """A server answering each request on a connection with the next scripted reply (bytes, or a callable)."""

    def __init__(self) -> None:
        self.replies: list[bytes | Callable[[asyncio.StreamWriter], object]] = []
        self.connections = 0
        self.closed = asyncio.Event()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
                await reader.readexactly(length)
                reply = self.replies.pop(0)
                if callable(reply):
                    result = reply(writer)
                    if asyncio.iscoroutine(result):
                        await result
                else:
                    writer.write(reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()
            writer.close()


@pytest.fixture
async def script() -> AsyncIterator[Script]:
    s = Script()
    server = await asyncio.start_server(s.handle, "127.0.0.1", 0)
    s.port = server.sockets[0].getsockname()[1]
    async with server:
        yield s


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    async with aiohttp.ClientSession() as session:
        c = UpstreamClient(16, session)
        yield c
        await c.close()


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def url(script: Script) -> URL:
    return URL(f"http://127.0.0.1:{script.port}/v1/chat/completions")


def split_at(wire: bytes, cut: int):  # type: ignore[no-untyped-def]
    """A scripted reply that sends ``wire`` in two writes, cut at ``cut``, a moment apart."""

    async def send(writer: asyncio.StreamWriter) -> None:
        writer.write(wire[:cut])
        await writer.drain()
        await asyncio.sleep(0.001)
        writer.write(wire[cut:])
        await writer.drain()

    return send


async def post(client: UpstreamClient, script: Script, timeout: aiohttp.ClientTimeout = TIMEOUT):  # type: ignore[no-untyped-def]
    return await client.post(url(script), b'{"a":1}', {"Content-Type": "application/json"}, timeout)


async def test_content_length_answer_and_keep_alive(script: Script, client: UpstreamClient) -> None:
    body = b'{"ok":true}'
    script.replies += [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)] * 2
    for _ in range(2):
        response = await post(client, script)
        assert (response.status, response.content_length, response.headers["content-type"]) == (200, len(body), "application/json")
        assert await response.read() == body
        response.close()
    assert script.connections == 1  # the second request reused the connection


async def test_chunked_stream_split_anywhere(script: Script, client: UpstreamClient) -> None:
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(BODY, BODY * 3, b"data: [DONE]\n\n")
    for cut in range(1, len(wire), 7):
        script.replies.append(split_at(wire, cut))
        response = await post(client, script)
        got = b"".join([chunk async for chunk in response.content.iter_any()])
        response.close()
        assert got == BODY * 4 + b"data: [DONE]\n\n"
    assert script.connections == 1


async def test_interim_response_and_body_until_close(script: Script, client: UpstreamClient) -> None:
    def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        writer.close()

    script.replies.append(answer)
    response = await post(client, script)
    assert response.status == 200 and response.content_length is None
    assert await response.read() == b"all of it"


async def test_close_before_the_end_closes_the_connection(script: Script, client: UpstreamClient) -> None:
    async def start(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(BODY), BODY))
        await writer.drain()

    script.replies.append(start)
    response = await post(client, script)
    assert await response.content.read(5) == BODY[:5]
    response.close()
    await asyncio.wait_for(script.closed.wait(), 2)  # the model server sees the router leave


async def test_errors_are_classified_as_with_aiohttp(script: Script, client: UpstreamClient) -> None:
    async def hang(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    script.replies.append(hang)
    response = await post(client, script, aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=0.2))
    with pytest.raises(aiohttp.ClientError) as caught:
        await response.read()
    assert classify(caught.value).kind == "timeout"
    response.close()

    def partial(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        writer.close()

    script.replies.append(partial)
    response = await post(client, script)
    with pytest.raises(aiohttp.ClientPayloadError) as payload:
        await response.read()
    assert classify(payload.value).kind == "upstream_disconnect"
    response.close()

    script.replies.append(lambda writer: writer.close())
    with pytest.raises(aiohttp.ClientError) as before:
        await post(client, script)
    assert classify(before.value).kind in ("upstream_disconnect", "upstream_io")

    script.replies.append(b"HTTP/1.1 2OO OK\r\n\r\n")
    with pytest.raises(aiohttp.ClientError) as malformed:
        await post(client, script)
    assert classify(malformed.value).kind == "upstream_io"

    script.replies.append(lambda writer: None)  # never answers: the total timeout
    with pytest.raises(TimeoutError) as total:
        await post(client, script, aiohttp.ClientTimeout(total=0.2, sock_connect=2, sock_read=2))
    assert classify(total.value).kind == "timeout"


async def test_refused_connect_is_a_connect_error(client: UpstreamClient) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(aiohttp.ClientConnectorError) as caught:
        await client.post(URL(f"http://127.0.0.1:{port}/v1/completions"), b"{}", {}, TIMEOUT)
    assert classify(caught.value).kind == "connect"


async def test_limit_makes_requests_wait_for_a_connection(script: Script) -> None:
    async with aiohttp.ClientSession() as session:
        client = UpstreamClient(1, session)
        script.replies += [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
                           b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
        first = await post(client, script)
        second = asyncio.ensure_future(post(client, script))
        await asyncio.sleep(0.05)
        assert not second.done()  # the only connection is in use
        assert await first.content.read(2) == b"ok"
        first.close()  # not read to its end: closed, and the slot is free again
        response = await asyncio.wait_for(second, 2)
        assert await response.read() == b"ok"
        response.close()
        assert script.connections == 2
        await client.close()


async def test_header_injection_is_refused(script: Script, client: UpstreamClient) -> None:
    with pytest.raises(ValueError):
        await client.post(url(script), b"{}", {"X-Request-Id": "a\r\nX-Evil: 1"}, TIMEOUT)


# ------------------------------------------------- relay() (issue 14): the body handed to a sink from the callback
async def test_relay_passes_every_byte_and_reuses_the_connection(script: Script, client: UpstreamClient) -> None:
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(BODY, BODY * 3, b"data: [DONE]\n\n")
    for cut in range(1, len(wire), 11):
        script.replies.append(split_at(wire, cut))
        response = await post(client, script)
        got: list[bytes] = []
        assert await response.relay(lambda data, got=got: got.append(data) is None)  # type: ignore[attr-defined]
        response.close()
        assert b"".join(got) == BODY * 4 + b"data: [DONE]\n\n"
    assert script.connections == 1


async def test_a_sink_that_holds_gets_the_rest_on_the_next_relay(script: Script, client: UpstreamClient) -> None:
    go_on = asyncio.Event()

    async def send(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(BODY), BODY))
        await writer.drain()
        await go_on.wait()
        writer.write(chunked(b"data: [DONE]\n\n"))
        await writer.drain()

    script.replies.append(send)
    response = await post(client, script)
    got: list[bytes] = []
    assert not await response.relay(lambda data: got.append(data) and False)  # type: ignore[attr-defined]
    assert got == [BODY]
    go_on.set()
    await asyncio.sleep(0.05)  # held: nothing read meanwhile
    assert got == [BODY]
    assert await response.relay(lambda data: got.append(data) is None)  # type: ignore[attr-defined]
    assert b"".join(got) == BODY + b"data: [DONE]\n\n"
    response.close()


async def test_relay_raises_what_reads_raise_and_what_the_sink_raised(script: Script, client: UpstreamClient) -> None:
    def cut_short(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(BODY), BODY))
        writer.close()

    script.replies.append(cut_short)
    response = await post(client, script)
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.relay(lambda data: True)  # type: ignore[attr-defined]
    response.close()

    async def stream(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b"%x\r\n%s\r\n" % (len(BODY), BODY))
        await writer.drain()

    def broken(data: bytes) -> bool:
        raise RuntimeError("the router's own bug")

    script.replies.append(stream)
    response = await post(client, script)
    with pytest.raises(RuntimeError, match="own bug"):
        await response.relay(broken)  # type: ignore[attr-defined]
    response.close()
