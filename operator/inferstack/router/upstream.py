"""A lean keep-alive HTTP/1.1 client for the router's calls to model servers.

Every client request is one POST to a model server, and every token of a streamed
answer comes back through this module, so it does the least that is correct: a pool of
keep-alive connections per host on asyncio protocols, the request written in one
``transport.write``, and the response parsed here (status line and headers once; the
body by ``Content-Length``, chunked framing, or until the server closes). It offers
exactly what :mod:`inferstack.router.proxy` uses of an ``aiohttp.ClientResponse``:
``status``, ``headers``, ``content_length``, ``read()``, ``content.read(n)``,
``content.iter_any()`` and ``close()``; anything but plain ``http://`` (a hosted
endpoint over TLS) goes to the aiohttp session it is given.

It keeps aiohttp's semantics where the router relies on them:

* timeouts (an ``aiohttp.ClientTimeout``): ``total`` bounds the whole exchange, from
  waiting for a connection to the last body byte; ``sock_connect`` the connect;
  ``sock_read`` the silence between reads once the request is sent (stopped while the
  router itself holds the reading back);
* errors are aiohttp's exception types, so :func:`inferstack.router.errors.classify`
  names them as before: a refused or failed connect is ``ClientConnectorError``
  (``connect``: the candidate may fall back to stable); a timeout ``TimeoutError``; a
  server that closes before its answer ``ServerDisconnectedError``, or mid-body
  ``ClientPayloadError`` (``upstream_disconnect``); a malformed answer a ``ClientError``
  (``upstream_io``). A POST is never retried on another connection;
* a response read to its end gives its connection back to the pool; ``close()`` before
  that closes the connection, which makes the model server abort the generation;
* streamed bodies are handed on as they arrive (``iter_any`` joins what came since the
  last read), and reading from the socket pauses while 128 KiB are unread;
* or, with ``relay(sink)`` (not aiohttp's), passed to ``sink`` from the connection's
  ``data_received`` as they are parsed: no future and no task wakeup per read, which is
  most of the router's CPU per event of a paced stream (issue 14). ``sink`` returns
  False to hold the reading (a client that is behind); ``relay`` then returns to its
  caller, who waits for the client and relays on;
* ``limit`` connections in use at most (more requests wait); idle ones are closed after
  15 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable
from functools import lru_cache
from typing import Any, Protocol, cast

import aiohttp
from aiohttp.client_reqrep import ConnectionKey
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

_MAX_HEAD = 64 * 1024  # status line and headers of one response
_MAX_SIZE_LINE = 4096  # a chunk-size line (with extensions) or a trailer line
_HIGH_WATER = 128 * 1024  # unread body bytes past which the socket is not read
_KEEPALIVE = 15.0  # seconds an idle connection is kept (aiohttp's default)
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_NO_BODY = frozenset({204, 304})
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())

# Body framing of a response.
_LENGTH, _CHUNKED, _UNTIL_EOF = 1, 2, 3
# Chunked states: a size line, chunk data, the CRLF after it, the trailer section.
_SIZE, _DATA, _DATA_END, _TRAILER = 1, 2, 3, 4


class UpstreamResponse(Protocol):
    """What :mod:`inferstack.router.proxy` and its callers use of an answer (an
    ``aiohttp.ClientResponse`` has it too)."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Any: ...
    @property
    def content_length(self) -> int | None: ...
    @property
    def content(self) -> Any: ...
    async def read(self) -> bytes: ...
    def close(self) -> None: ...


class MalformedResponse(aiohttp.ClientError):
    """The model server's answer is not HTTP/1.1 the router can read (``upstream_io``)."""


def _whole_chunk(data: bytes) -> int:
    """Where the payload starts when ``data`` is exactly one whole, non-empty chunk with no extension
    (``size CRLF payload CRLF``, a token as a model server writes it), else 0."""
    eol = data.find(b"\r\n", 0, 17)
    if eol > 0 and _HEX.fullmatch(data, 0, eol) is not None:
        start = eol + 2
        end = start + int(data[:eol], 16)
        if end > start and end + 2 == len(data) and data[end:] == b"\r\n":
            return start
    return 0


@lru_cache(maxsize=1024)
def _target(url: URL) -> tuple[str, int, bytes]:
    """(host to connect to, port, the request line and Host header), once per URL."""
    host = url.raw_host or ""
    port = url.port or 80
    netloc = f"[{host}]" if ":" in host else host
    if url.explicit_port and port != 80:
        netloc += f":{port}"
    head = f"POST {url.raw_path_qs} HTTP/1.1\r\nHost: {netloc}\r\n".encode()
    return host, port, head


class UpstreamClient:
    """Keep-alive connections to ``http://`` model servers; other URLs go to ``fallback``."""

    def __init__(self, limit: int, fallback: aiohttp.ClientSession, keepalive: float = _KEEPALIVE) -> None:
        self.limit = limit
        self.fallback = fallback
        self.keepalive = keepalive
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._cleanup: asyncio.TimerHandle | None = None
        self._closed = False
        # asyncio.get_running_loop() makes a getpid syscall each time (its fork check): asked once.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def post(self, url: URL, body: bytes, headers: dict[str, str],
                   timeout: aiohttp.ClientTimeout) -> UpstreamResponse:
        """Send the request; returns once the status line and headers are in (the body is read
        from the response). Raises aiohttp's exception types, as ``ClientSession.post`` would."""
        if url.scheme != "http":
            return await self.fallback.post(url, data=body, headers=headers, timeout=timeout)
        host, port, head = _target(url)
        fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        if fields.count("\n") != len(headers) or fields.count("\r") != len(headers):
            raise ValueError("Newline or carriage return character detected in HTTP header")  # as aiohttp refuses it
        request = b"%s%sUser-Agent: inferstack-router\r\nContent-Length: %d\r\n\r\n%s" % (
            head, fields.encode(), len(body), body)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        total = timeout.total
        deadline = loop.time() + total if total else None
        await self._take_slot(deadline)
        conn: _Connection | None = None
        response: _Response | None = None
        try:
            conn = self._reuse(host, port)
            if conn is None:
                conn = await self._connect(loop, host, port, timeout.sock_connect, deadline)
            response = _Response(conn, loop, timeout.sock_read, deadline)
            conn.start(response, request)
            await response.wait_head()
        except BaseException:
            if response is not None:
                response.close()  # closes the connection unless the answer is complete
            elif conn is not None:
                conn.abort()
            else:
                self._give_back_slot()
            raise
        return response

    # ---------------------------------------------------------------- pool

    async def _take_slot(self, deadline: float | None) -> None:
        if self._in_use < self.limit and not self._waiters:
            self._in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            if deadline is None:
                await waiter
            else:
                async with asyncio.timeout_at(deadline):
                    await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._give_back_slot()  # it was handed to us as we gave up: pass it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def _give_back_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter: in use stays the same
                return
        self._in_use -= 1

    def _reuse(self, host: str, port: int) -> _Connection | None:
        idle = self._idle.get((host, port))
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop, host: str, port: int, sock_connect: float | None,
                       deadline: float | None) -> _Connection:
        limit = sock_connect
        if deadline is not None:
            left = deadline - loop.time()
            limit = left if limit is None else min(limit, left)
        try:
            async with asyncio.timeout(limit):
                _, conn = await loop.create_connection(lambda: _Connection(self, (host, port)), host, port)
        except TimeoutError:
            raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host http://{host}:{port}") from None
        except OSError as exc:
            key = ConnectionKey(host, port, False, True, None, None, None)
            raise aiohttp.ClientConnectorError(key, exc) from exc
        return conn

    def released(self, conn: _Connection) -> None:
        """``conn`` finished its answer and may carry another."""
        conn.idle_since = self._loop.time() if self._loop is not None else asyncio.get_running_loop().time()
        self._idle.setdefault(conn.key, []).append(conn)
        self._give_back_slot()
        if self._cleanup is None:
            self._cleanup = asyncio.get_running_loop().call_later(self.keepalive, self._close_stale)

    def lost(self) -> None:
        """A connection in use was closed."""
        self._give_back_slot()

    def _close_stale(self) -> None:
        self._cleanup = None
        now = asyncio.get_running_loop().time()
        for key, conns in list(self._idle.items()):
            fresh = []
            for conn in conns:
                if conn.closed:
                    continue
                if now - conn.idle_since >= self.keepalive:
                    conn.close_idle()
                else:
                    fresh.append(conn)
            if fresh:
                self._idle[key] = fresh
            else:
                del self._idle[key]
        if self._idle:
            self._cleanup = asyncio.get_running_loop().call_later(self.keepalive, self._close_stale)

    async def close(self) -> None:
        self._closed = True
        if self._cleanup is not None:
            self._cleanup.cancel()
            self._cleanup = None
        for conns in self._idle.values():
            for conn in conns:
                conn.close_idle()
        self._idle.clear()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one response at a time."""

    def __init__(self, client: UpstreamClient, key: tuple[str, int]) -> None:
        self.client = client
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.response: _Response | None = None
        self.closed = False
        self.in_use = True  # made for a request
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def start(self, response: _Response, request: bytes) -> None:
        self.response = response
        self.in_use = True
        assert self.transport is not None
        self.transport.write(request)
        response.sent()

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # nothing asked: a server that talks out of turn is not reused
            self.abort()
            return
        response.feed(data)

    def eof_received(self) -> bool:
        response = self.response
        if response is not None:
            response.feed_eof()
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self.response
        if response is not None:
            response.lost(exc)
        self.transport = None
        if self.in_use:
            self.in_use = False
            self.response = None
            self.client.lost()

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def done(self, reusable: bool) -> None:
        """The response is complete: back to the pool, or closed."""
        self.response = None
        if not reusable or self.closed or self.client._closed:
            self.abort()
            return
        self.in_use = False
        self.client.released(self)

    def abort(self) -> None:
        """Close now, whatever is in flight (an unread answer: the model server stops generating)."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
        if self.in_use:
            self.in_use = False
            self.response = None
            self.client.lost()

    def close_idle(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


class _Response:
    """One answer: parsed as its bytes arrive, read by the router with ``content.iter_any()``."""

    def __init__(self, conn: _Connection, loop: asyncio.AbstractEventLoop, read_timeout: float | None,
                 deadline: float | None) -> None:
        self._conn: _Connection | None = conn
        self._loop = loop
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy[str] = _NO_HEADERS
        self.content_length: int | None = None
        self._head = b""  # the status line and headers, until they are complete
        self._framing = 0  # 0: head not parsed yet
        self._keep_alive = False
        self._left = 0  # body bytes still to come (Content-Length), or of the current chunk
        self._chunk_state = _SIZE
        self._carry = b""  # a partial size line, CRLF or trailer line
        self._pieces: list[bytes] = []  # body bytes received, not read yet
        self._buffered = 0
        self._paused = False
        self._complete = False  # the whole body is in _pieces (or was read)
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        # relay(): where body bytes go as they are parsed; whether it asked to hold; what it raised.
        self._sink: Callable[[bytes], bool] | None = None
        self._held = False
        self._sink_exc: BaseException | None = None
        # sock_read: armed once the request is sent; data moves _last_data, and the timer,
        # when it fires, re-arms itself for what is left (no timer churn per event).
        self._read_timeout = read_timeout or None
        self._last_data = 0.0
        self._read_timer: asyncio.TimerHandle | None = None
        self._total_timer = loop.call_at(deadline, self._on_total_timeout) if deadline is not None else None

    # -------------------------------------------------------- the aiohttp surface

    @property
    def content(self) -> _Response:
        return self

    @property
    def complete(self) -> bool:
        """The whole body has arrived (a sink of ``relay`` that sees True has the last bytes)."""
        return self._complete

    @property
    def buffered(self) -> bool:
        """Body bytes arrived and not read (or relayed) yet."""
        return bool(self._pieces)

    def iter_any(self) -> _Response:
        return self

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        data = await self._next()
        if not data:
            raise StopAsyncIteration
        return data

    async def read(self, n: int = -1) -> bytes:
        """The whole body (``n`` < 0), or at most ``n`` bytes of what has arrived (``content.read(n)``)."""
        if n >= 0:
            data = await self._next()
            if len(data) > n:
                self._pieces.insert(0, data[n:])
                self._buffered += len(data) - n
                data = data[:n]
            return data
        chunks = []
        while data := await self._next():
            chunks.append(data)
        return b"".join(chunks)

    async def relay(self, sink: Callable[[bytes], bool]) -> bool:
        """Hand the body to ``sink`` as it arrives, called from the connection's ``data_received``.

        Returns True at the end of the body; False when ``sink`` returned False, and then the
        socket is not read (nor ``sock_read`` counted) until ``relay`` is called again. Raises
        what reads raise, and what ``sink`` raised. What arrived before is passed on first.
        """
        self._held = False
        self._sink = sink
        try:
            if self._pieces:
                self._pass_on()
            if self._paused and not self._held:
                self._paused = False
                if self._conn is not None:
                    self._conn.resume()
                self._arm_read_timer()
            while True:
                if self._sink_exc is not None:
                    exc, self._sink_exc = self._sink_exc, None
                    raise exc
                if self._held:
                    return False
                if self._exc is not None:
                    raise self._exc
                if self._complete or self._closed:
                    return True
                await self._wait()
        finally:
            self._sink = None

    def _pass_on(self) -> None:
        """Body bytes parsed from one socket read, to relay()'s sink."""
        sink = self._sink
        assert sink is not None
        pieces = self._pieces
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self._buffered = 0
        try:
            go_on = sink(data)
        except BaseException as exc:  # the router's own failure, from a protocol callback: relay() raises it
            self._sink_exc = exc
            go_on = False
        if not go_on:
            self._hold()

    def _hold(self) -> None:
        """The sink asked to hold (or failed): stop reading the socket, hand control back to relay()."""
        self._sink = None
        self._held = True
        if not self._complete and not self._paused and self._conn is not None:
            self._paused = True  # relay() resumes it (sock_read stops meanwhile)
            self._conn.pause()
        self._wake()

    def close(self) -> None:
        """Done with the answer: a connection whose answer was not read to its end is closed."""
        if self._closed:
            return
        self._closed = True
        self._stop_timers()
        conn, self._conn = self._conn, None
        if conn is not None and conn.response is self:
            conn.abort()

    # -------------------------------------------------------------- reading

    async def wait_head(self) -> None:
        while not self._framing:
            if self._exc is not None:
                raise self._exc
            await self._wait()

    async def _next(self) -> bytes:
        """What arrived since the last read; b"" at the end of the body."""
        while True:
            pieces = self._pieces
            if pieces:
                data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                pieces.clear()
                self._buffered = 0
                if self._paused:
                    self._paused = False
                    if self._conn is not None:
                        self._conn.resume()
                    self._arm_read_timer()
                return data
            if self._exc is not None:
                raise self._exc
            if self._complete or self._closed:
                return b""
            await self._wait()

    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------- timeouts

    def _arm_read_timer(self) -> None:
        if self._read_timeout is None or self._complete or self._closed:
            return
        self._last_data = self._loop.time()
        if self._read_timer is None:
            self._read_timer = self._loop.call_at(self._last_data + self._read_timeout, self._on_read_timeout)

    def _on_read_timeout(self) -> None:
        self._read_timer = None
        if self._complete or self._closed or self._paused or self._read_timeout is None:
            return
        due = self._last_data + self._read_timeout
        if due > self._loop.time():
            self._read_timer = self._loop.call_at(due, self._on_read_timeout)
            return
        self._fail(aiohttp.SocketTimeoutError("Timeout on reading data from socket"))

    def _on_total_timeout(self) -> None:
        self._total_timer = None
        if not self._complete and not self._closed:
            self._fail(TimeoutError())

    def _stop_timers(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        if self._total_timer is not None:
            self._total_timer.cancel()
            self._total_timer = None

    def _fail(self, exc: BaseException) -> None:
        """The answer cannot be read on: the error for the reader, the connection closed."""
        if self._exc is None:
            self._exc = exc
        self._stop_timers()
        conn, self._conn = self._conn, None
        if conn is not None and conn.response is self:
            conn.abort()
        self._wake()

    # ---------------------------------------------------- the connection's calls

    def sent(self) -> None:
        self._arm_read_timer()

    def feed(self, data: bytes) -> None:
        sink = self._sink
        if (sink is not None and self._chunk_state == _SIZE and not self._carry and not self._pieces
                and self._framing == _CHUNKED and self._exc is None and not self._complete):
            # A relayed stream's read that is exactly one whole chunk, no extension: a token as a
            # model server writes it, nearly every read of a paced stream. Handed to the sink with
            # none of the general path's steps (issue 14: per event, the steps were its cost).
            start = _whole_chunk(data)
            if start:
                if self._read_timeout is not None:
                    self._last_data = self._loop.time()
                try:
                    go_on = sink(data[start:-2])
                except BaseException as exc:  # the router's own failure, from a protocol callback: relay() raises it
                    self._sink_exc = exc
                    go_on = False
                if not go_on:
                    self._hold()
                return
        if self._exc is not None or self._complete:
            return
        if self._read_timeout is not None:
            self._last_data = self._loop.time()
        before = len(self._pieces)
        try:
            if not self._framing:
                data = self._feed_head(data)
                if not self._framing:
                    return
                self._wake()
                if self._complete:
                    self._finished()
                    return
                if not data:
                    return
            if self._framing == _CHUNKED:
                self._feed_chunked(data)
            elif self._framing == _LENGTH:
                self._feed_length(data)
            else:
                self._pieces.append(data)
                self._buffered += len(data)
        except (MalformedResponse, aiohttp.ClientPayloadError) as exc:
            self._fail(exc)
            return
        if self._sink is not None and self._pieces:
            self._pass_on()  # relayed: the reader is woken only at the end, or when the sink holds
            if self._complete:
                self._finished()
            return
        if self._complete:
            self._finished()
        elif len(self._pieces) > before:
            self._wake()
            if self._buffered > _HIGH_WATER and not self._paused and self._conn is not None:
                self._paused = True  # the router reads on: resume then (sock_read stops meanwhile)
                self._conn.pause()

    def feed_eof(self) -> None:
        if self._exc is not None or self._complete:
            return
        if self._framing == _UNTIL_EOF:
            self._complete = True
            self._keep_alive = False
            self._finished()
        else:
            self.lost(None)

    def lost(self, exc: BaseException | None) -> None:
        if self._exc is not None or self._complete:
            return
        self._conn = None
        if not self._framing:
            err: BaseException = (aiohttp.ClientOSError(exc.errno, exc.strerror) if isinstance(exc, OSError)
                                  else aiohttp.ServerDisconnectedError())
        else:
            err = aiohttp.ClientPayloadError(f"Response payload is not completed: {exc!r}")
        self._fail(err)

    def _finished(self) -> None:
        self._stop_timers()
        conn, self._conn = self._conn, None
        if conn is not None and conn.response is self:
            conn.done(self._keep_alive)
        self._wake()

    # --------------------------------------------------------------- parsing

    def _feed_head(self, data: bytes) -> bytes:
        """Take the status line and headers from ``data``; returns the rest (body bytes)."""
        buf = self._head + data if self._head else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise MalformedResponse("the response's headers are too long")
                self._head = buf
                return b""
            rest = buf[end + 4:]
            if self._parse_head(buf[:end]):
                self._head = b""
                return rest
            buf = rest  # an interim 1xx response: the real one follows

    def _parse_head(self, head: bytes) -> bool:
        """Parse one response head; False for an interim (1xx) response."""
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise MalformedResponse(f"invalid status line {lines[0][:100]!r}")
        status = int(code)
        if status < 200:
            if status == 101:
                raise MalformedResponse("the model server switched protocols")
            return False
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name[-1:] in (b" ", b"\t") or line[:1] in (b" ", b"\t"):
                raise MalformedResponse(f"invalid header line {line[:100]!r}")
            headers.add(name.decode("latin-1"), value.strip(b" \t").decode("utf-8", "surrogateescape"))
        self.status = status
        self.reason = reason.decode("latin-1")
        self.headers = CIMultiDictProxy(headers)
        connection = headers.get("Connection", "").lower()
        keep_alive = version == b"HTTP/1.1" and "close" not in connection
        transfer = headers.getall("Transfer-Encoding", [])
        lengths = headers.getall("Content-Length", [])
        if lengths:
            if any(not v.isdigit() or not v.isascii() for v in lengths) or len(set(lengths)) > 1:
                raise MalformedResponse("invalid Content-Length")
            self.content_length = int(lengths[0])
        if status in _NO_BODY:
            self._framing, self._complete = _LENGTH, True
        elif transfer:
            codings = ",".join(transfer).lower()
            if codings.rsplit(",", 1)[-1].strip() == "chunked":
                self._framing = _CHUNKED
                self.content_length = None
                keep_alive = keep_alive and not lengths  # both framings: read it, but reuse nothing
            else:
                self._framing, keep_alive = _UNTIL_EOF, False
        elif lengths:
            self._framing = _LENGTH
            self._left = self.content_length or 0
            self._complete = self._left == 0
        else:
            self._framing, keep_alive = _UNTIL_EOF, False
        self._keep_alive = keep_alive
        return True

    def _feed_length(self, data: bytes) -> None:
        left = self._left
        if len(data) >= left:
            if len(data) > left:
                self._keep_alive = False  # bytes past the body: the connection is not trusted again
                data = data[:left]
            self._left = 0
            self._complete = True
        else:
            self._left = left - len(data)
        if data:
            self._pieces.append(data)
            self._buffered += len(data)

    def _feed_chunked(self, data: bytes) -> None:
        if self._carry:
            data = self._carry + data
            self._carry = b""
        pieces = self._pieces
        state = self._chunk_state
        if state == _SIZE:
            # Exactly one whole chunk, no extension: a streamed event as a model server writes it,
            # nearly every read of a paced stream. Taken here without the general loop below.
            start = _whole_chunk(data)
            if start:
                pieces.append(data[start:-2])
                self._buffered += len(data) - start - 2
                return
        pos, n = 0, len(data)
        while pos < n:
            if state == _DATA:
                end = pos + self._left
                if end <= n:
                    pieces.append(data[pos:end])
                    self._buffered += end - pos
                    pos = end
                    state = _DATA_END
                else:
                    pieces.append(data[pos:] if pos else data)
                    self._buffered += n - pos
                    self._left = end - n
                    pos = n
            elif state == _DATA_END:
                if n - pos < 2:
                    self._carry = data[pos:]
                    break
                if data[pos:pos + 2] != b"\r\n":
                    raise aiohttp.ClientPayloadError("chunk not ended by CRLF")
                pos += 2
                state = _SIZE
            else:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    if n - pos > _MAX_SIZE_LINE:
                        raise aiohttp.ClientPayloadError("chunk size line too long")
                    self._carry = data[pos:]
                    break
                if state == _TRAILER:
                    if eol == pos:  # the empty line ending the body
                        pos += 2
                        self._complete = True
                        if pos < n:
                            self._keep_alive = False
                        break
                    pos = eol + 2  # a trailer field: not passed on
                    continue
                line = data[pos:eol]
                semi = line.find(b";")
                size_text = (line[:semi] if semi >= 0 else line).rstrip(b" \t")
                if _HEX.fullmatch(size_text) is None:
                    raise aiohttp.ClientPayloadError(f"invalid chunk size {line[:40]!r}")
                size = int(size_text, 16)
                pos = eol + 2
                if size:
                    self._left = size
                    state = _DATA
                else:
                    state = _TRAILER
        self._chunk_state = state
