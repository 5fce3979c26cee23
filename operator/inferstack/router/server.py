"""The router's HTTP/1.1 server for clients: llhttp (``httptools``) on asyncio protocols.

Every request and every streamed token of the data path passes through here, so it does the
least that is correct (issue 14: aiohttp's server machinery was ~110 µs of CPU per request,
this ~50). A request reaches its handler once its head is parsed: authentication refuses a
client before its body is read. The body is buffered by the connection as it arrives, up to
the router's limit, and the handler awaits it (:meth:`Request.read`).

What it refuses, before any router code runs, each with a short plain-text answer that
quotes nothing the client sent, and a closed connection (the parser cannot go on):

* malformed HTTP (llhttp in its strict mode: bad header names or values, a request with both
  ``Content-Length`` and ``Transfer-Encoding``, a ``Transfer-Encoding`` that does not end in
  ``chunked``, bad chunk framing): 400;
* a head over ``MAX_HEAD_BYTES`` (past the read it began in), more than ``MAX_HEADERS`` header
  fields: 431; one field over ``MAX_FIELD_BYTES``: 400; a target over ``MAX_FIELD_BYTES``: 414;
* an ``Expect`` other than ``100-continue``: 417; bytes after a ``CONNECT``: 400 (an ``Upgrade`` header
  is ignored: the request is answered over HTTP/1.1 and the connection closed);
* a head not received within ``head_timeout`` seconds of its first byte (slowloris): 408.

Its log names the peer and the kind of error only (a refused header line can be an API key).

Otherwise each request gets exactly one answer, in order (pipelined requests wait, and the
socket is not read while one does), and the connection is kept alive unless the client or
the answer says close, or the request's body was not read to its end. A client that goes away
cancels its handler, and with it the model server's request (no GPU time for nobody). Idle
keep-alive connections are closed after ``keepalive`` seconds.

:class:`Response` and :class:`StreamResponse` are the answers handlers return; a stream is
written as it goes (chunked), with the writing paused while the client's socket is over its
high-water mark (``writing_paused``, :meth:`StreamResponse.drain`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import httptools
from aiohttp import ClientConnectionResetError
from multidict import CIMultiDict, CIMultiDictProxy

log = logging.getLogger(__name__)

MAX_HEADERS = 128  # header fields per request (aiohttp's limit)
MAX_FIELD_BYTES = 8190  # one header line, or the request target (aiohttp's limit)
MAX_HEAD_BYTES = 64 * 1024  # the whole head
KEEPALIVE = 75.0  # seconds an idle keep-alive connection is kept (aiohttp's default)
# Seconds a connection closed with its request unread (a refusal, a 413, a 401 before the body) is still read
# and the data dropped: closing a socket with unread data makes the kernel send a reset, which can destroy
# the answer before the client reads it.
LINGER = 2.0
SWEEP = 1.0  # seconds between checks of the connections' deadlines (each may fire up to this late)
DECODED = frozenset({"gzip", "x-gzip", "deflate", "identity"})


class BodyTooLarge(Exception):
    """The body is larger than the limit it was read with (or than the server buffers)."""


class BodyError(Exception):
    """The body cannot be decoded (its Content-Encoding does not match its bytes, or is unknown)."""


class _Refuse(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_PHRASES = {s.value: s.phrase.encode() for s in HTTPStatus}


class _Date:
    """The ``Date`` header value, formatted once a second, not per answer."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.value = second, formatdate(second, usegmt=True).encode()
        return cls.value


def _head(status: int, headers: Mapping[str, str], extra: bytes) -> bytes:
    """Status line and header block; refuses a header that would split the head (CR or LF in it)."""
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if fields.count("\n") != len(headers) or fields.count("\r") != len(headers):
        raise ValueError("newline or carriage return in a response header")
    return b"HTTP/1.1 %d %s\r\n%sDate: %s\r\n%s\r\n" % (
        # surrogateescape: a value decoded that way (a model server's header bytes) goes out as it came.
        status, _PHRASES.get(status, b"Unknown"), fields.encode("utf-8", "surrogateescape"), _Date.now(), extra)


class Response:
    """A whole answer: status, headers and body, written in one ``transport.write``."""

    __slots__ = ("body", "close", "headers", "status")

    def __init__(self, body: bytes = b"", status: int = 200, headers: Mapping[str, str] | None = None,
                 content_type: str | None = None) -> None:
        self.body = body
        self.status = status
        self.headers: dict[str, str] = dict(headers) if headers else {}
        if content_type is not None:
            self.headers["Content-Type"] = content_type
        self.close = False

    def force_close(self) -> None:
        """Close the connection after this answer."""
        self.close = True

    def encode(self, closing: bool) -> bytes:
        extra = b"Content-Length: %d\r\n%s" % (len(self.body), b"Connection: close\r\n" if closing else b"")
        return _head(self.status, self.headers, extra) + self.body


class StreamResponse:
    """An answer written as it is produced (chunked); ``prepare`` sends the head.

    ``hold`` instead keeps the head until the first write, which then sends both in one
    ``transport.write`` (a syscall and a TCP segment fewer per stream, when the first chunk is
    already there: router/app.py's relay of a model server's stream); a write of nothing sends it
    alone. A caller that writes to the transport itself frames its bytes with ``framed`` and
    ``end``, which put the held head first: this class alone decides when the head goes.
    """

    __slots__ = ("_conn", "_eof", "close", "headers", "pending", "status")

    def __init__(self, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.headers: dict[str, str] = dict(headers) if headers else {}
        self.close = False
        self.pending = b""  # the head, held until the first write (read it; ``framed`` and ``end`` take it)
        self._conn: _Connection | None = None
        self._eof = False

    @property
    def prepared(self) -> bool:
        return self._conn is not None

    async def prepare(self, request: Request) -> None:
        self.hold(request)
        await self.write(b"")

    def hold(self, request: Request) -> None:
        conn = request.protocol
        self.headers["Transfer-Encoding"] = "chunked"
        self.pending = _head(self.status, self.headers, b"")
        self._conn = conn
        request.answered = True

    def _connection(self) -> _Connection:
        conn = self._conn
        assert conn is not None, "prepare() first"
        return conn

    def framed(self, data: bytes) -> bytes:
        """``data`` as one chunk (nothing for no data), after the head if it is still held: the bytes to write
        (the head counts as sent)."""
        frame = b"%x\r\n%b\r\n" % (len(data), data) if data else b""
        if self.pending:
            frame, self.pending = self.pending + frame, b""
        return frame

    def end(self, data: bytes = b"") -> bytes:
        """The stream's last bytes: :meth:`framed` ``data`` and the end, for the caller to write; the stream
        counts as ended."""
        self._eof = True
        return self.framed(data) + b"0\r\n\r\n"

    async def write(self, data: bytes) -> None:
        self._connection().write(self.framed(data))
        await self.drain()

    async def drain(self) -> None:
        conn = self._connection()
        if conn.writing_paused:
            conn.write(b"")  # raises when the client went away
            await conn.drained()

    async def write_eof(self) -> None:
        if self._eof:
            return
        self._connection().write(self.end())


Handler = Callable[["Request"], Awaitable[Response | StreamResponse]]


class Request:
    """One request: its head, and its body as the connection receives it."""

    __slots__ = ("_chunks", "_done", "_error", "_expect", "_size", "_too_large", "_waiter", "answered", "content_length",
                 "headers", "identity", "keep_alive", "method", "path", "protocol", "query", "transport")

    def __init__(self, protocol: _Connection, method: str, target: bytes, headers: CIMultiDictProxy[str],
                 keep_alive: bool, expect_continue: bool) -> None:
        self.protocol = protocol
        self.transport = protocol.transport
        self.method = method
        path, _, query = target.partition(b"?")
        self.path = path.decode("utf-8", "surrogateescape")
        self.query = query.decode("utf-8", "surrogateescape")
        self.headers = headers
        self.keep_alive = keep_alive
        length = headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None
        self.identity: Any = None  # who calls: set by the router's authentication
        self.answered = False  # a head was written for it (a stream's, or the whole answer)
        self._chunks: list[bytes] = []
        self._size = 0
        self._done = False
        self._too_large = self.content_length is not None and self.content_length > protocol.server.max_body
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._expect = expect_continue

    @property
    def body_complete(self) -> bool:
        return self._done

    def _feed(self, data: bytes) -> None:
        if self._too_large:
            return  # past the limit: nothing more is kept
        self._size += len(data)
        if self._size > self.protocol.server.max_body:
            self._too_large = True
            self._chunks.clear()
            return
        self._chunks.append(data)

    def _finish(self, error: BaseException | None = None) -> None:
        self._done = True
        self._error = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self, limit: int) -> bytes:
        """The whole body, decoded (gzip, deflate); :class:`BodyTooLarge` past ``limit`` bytes (as sent or
        decoded), :class:`BodyError` when it cannot be decoded. Waits for it (the caller bounds how long)."""
        if self.content_length is not None and self.content_length > limit:
            raise BodyTooLarge
        if not self._done:
            if self._expect:
                self._expect = False
                self.protocol.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._waiter = asyncio.get_running_loop().create_future()
            self.protocol.resume_body()
            await self._waiter
        if self._error is not None:
            raise BodyError from self._error
        if self._too_large or self._size > limit:
            raise BodyTooLarge
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        encoding = self.headers.get("Content-Encoding")
        if encoding is not None:
            data = _decode(data, encoding, limit)
        return data


def _decode(data: bytes, encoding: str, limit: int) -> bytes:
    """``data`` decoded by its Content-Encoding list (applied in order, undone last first), at most ``limit``
    bytes of output: a small body that inflates past the limit is refused as too large, never inflated whole."""
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if coding not in DECODED:
            raise BodyError(f"unsupported Content-Encoding {coding[:32]!r}")
        # gzip: a gzip header; deflate: a zlib stream (what HTTP calls deflate), or a raw one as some clients send.
        wbits = 16 + zlib.MAX_WBITS if coding in ("gzip", "x-gzip") else zlib.MAX_WBITS
        try:
            data = _inflate(data, wbits, limit)
        except zlib.error:
            if wbits != zlib.MAX_WBITS:
                raise BodyError("the body does not match its Content-Encoding") from None
            try:
                data = _inflate(data, -zlib.MAX_WBITS, limit)
            except zlib.error:
                raise BodyError("the body does not match its Content-Encoding") from None
    return data


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(data, limit + 1)
    if len(out) > limit or inflater.unconsumed_tail:
        raise BodyTooLarge
    if not inflater.eof:
        raise zlib.error("truncated stream")
    return out


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, runs their handlers one at a time, writes their answers."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.writing_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._target = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._in_head = False
        self._messages = 0  # requests begun on this connection
        self._request: Request | None = None  # being received
        self._queue: deque[Request] = deque()  # received, waiting for the one being handled
        self._task: asyncio.Task[None] | None = None
        self.deadline = 0.0  # loop time when _timed_out is due (0: none); HTTPServer's sweep calls it
        self._closing = False
        self._reading = True

    # ------------------------------------------------------------- transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.server.opened(self)
        self._arm(self.server.keepalive)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._closing = True
        self._disarm()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client went away: its handler (and the model server's request) stop
        request = self._request
        if request is not None and not request._done:
            request._finish(ConnectionResetError("the client closed the connection"))
        self._queue.clear()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self.transport = None

    def eof_received(self) -> bool:
        # The client closed its side: it went away (HTTP clients do not half-close and wait), so the
        # transport closes and connection_lost cancels the handler, as aiohttp's server did.
        return False

    def _linger(self) -> None:
        """Close after what is written: half-close now, drop what still comes for ``LINGER`` s, then close."""
        self._closing = True
        self._queue.clear()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.resume_body()
        self._arm(LINGER)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drained(self) -> None:
        if self.writing_paused and self.transport is not None:
            if self._drain is None or self._drain.done():
                self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    def write(self, data: bytes) -> None:
        """Write ``data`` (none: only check); raises as aiohttp's writers do when the client went away."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ClientConnectionResetError("Cannot write to closing transport")
        if data:
            transport.write(data)

    def _arm(self, seconds: float) -> None:
        # A deadline the server's once-a-second sweep checks, not a timer per request: arming and
        # cancelling two TimerHandles per request cost more than the whole sweep.
        self.deadline = self.server.loop.time() + seconds

    def _disarm(self) -> None:
        self.deadline = 0.0

    def _timed_out(self) -> None:
        self.deadline = 0.0
        if self._closing:
            if self.transport is not None:
                self.transport.close()  # lingered long enough
        elif self._in_head:
            self._refuse(_Refuse(408, "the request head was not received in time"))
        elif self._task is None and self.transport is not None:
            self.transport.close()  # idle keep-alive connection

    def resume_body(self) -> None:
        if not self._reading and self.transport is not None and not self._closing:
            self._reading = True
            self.transport.resume_reading()

    # --------------------------------------------------------------- parsing

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        in_head, messages = self._in_head, self._messages
        try:
            self.parser.feed_data(data)
            # llhttp buffers a head's partial field itself, unbounded: count what a head has taken.
            # A read in which the head began is not counted (it may hold the message before):
            # the bound is MAX_HEAD_BYTES past the read a head starts in.
            if self._in_head and in_head and self._messages == messages:
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    raise _Refuse(431, "the request head is too large")
        except _Refuse as refusal:
            self._refuse(refusal)
        except httptools.HttpParserUpgrade:
            self._refuse(_Refuse(400, "protocol upgrades are not served here"))
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Refuse):  # a callback's own failure
                raise
            self._refuse(exc.__context__)
        except httptools.HttpParserError as exc:
            request = self._request
            if request is not None and not request._done:
                request._finish(exc)  # a body that breaks the framing (chunked): the handler says it
                self._closing = True
                self._pause()
                return
            self._refuse(_Refuse(400, "malformed HTTP request"), kind=type(exc).__name__)

    def on_message_begin(self) -> None:
        self._messages += 1
        self._in_head = True
        self._head_bytes = 0
        self._target = b""
        self._fields = []
        self._arm(self.server.head_timeout)

    def on_url(self, url: bytes) -> None:
        self._target += url
        if len(self._target) > MAX_FIELD_BYTES:
            raise _Refuse(414, "the request target is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        fields = self._fields
        if len(fields) >= MAX_HEADERS:
            raise _Refuse(431, "too many header fields")
        if len(name) + len(value) > MAX_FIELD_BYTES:
            raise _Refuse(400, "a header line is too long")
        fields.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        headers: CIMultiDict[str] = CIMultiDict()
        expect = False
        for name, value in self._fields:
            text = value.decode("utf-8", "surrogateescape")
            headers.add(name.decode("latin-1"), text)
            if len(name) == 6 and name.lower() == b"expect":
                if text.strip().lower() != "100-continue":
                    raise _Refuse(417, "only Expect: 100-continue is understood")
                expect = True
        parser = self.parser
        request = Request(self, parser.get_method().decode("latin-1"), self._target, CIMultiDictProxy(headers),
                          parser.should_keep_alive(), expect)
        self._request = request
        if self._task is None:
            self._start(request)
        else:
            self._queue.append(request)  # pipelined: waits for the one before, and nothing more is read
            self._pause()

    def on_body(self, body: bytes) -> None:
        request = self._request
        if request is not None:
            request._feed(body)

    def on_message_complete(self) -> None:
        request = self._request
        self._request = None
        if request is not None:
            request._finish()

    def _pause(self) -> None:
        if self._reading and self.transport is not None:
            self._reading = False
            self.transport.pause_reading()

    def _refuse(self, refusal: _Refuse, kind: str = "") -> None:
        """Answer a request the server itself refuses (plain text, quoting nothing), then close."""
        if self._closing:
            return
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        log.info("refused a malformed HTTP request from %s: %s%s", peer[0] if isinstance(peer, tuple) else "?",
                 refusal.reason, f" ({kind})" if kind else "")
        self._closing = True
        self._disarm()
        self._queue.clear()
        if self._task is not None:
            return  # an answer is being written: the connection closes after it
        body = refusal.reason.encode() + b"\n"
        response = Response(body, refusal.status, content_type="text/plain; charset=utf-8")
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(response.encode(closing=True))
            self._linger()

    # -------------------------------------------------------------- handling

    def _start(self, request: Request) -> None:
        self._disarm()
        self._task = self.server.loop.create_task(self._handle(request))  # the server's: no getpid per call

    async def _handle(self, request: Request) -> None:
        try:
            try:
                response = await self.server.handler(request)
                self._answered(request, response)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The handler failed, or its answer could not be written (a header with a line break): a
                # JSON 500 that says nothing of the cause, unless a stream already sent its head.
                log.error("unexpected %s handling %s %s", type(exc).__name__, request.method, request.path[:200],
                          exc_info=exc)
                if self.transport is not None and not self.transport.is_closing() and not request.answered:
                    self._answered(request, self.server.internal_error())
                elif self.transport is not None:
                    self.transport.close()
        except asyncio.CancelledError:
            if self.transport is not None:
                self.transport.close()
            raise
        finally:
            self._task = None
        if self._closing or self.transport is None:
            return
        if self._queue:  # the next pipelined request
            self._start(self._queue.popleft())
            if not self._queue:
                self.resume_body()
            return
        self.resume_body()
        self._arm(self.server.keepalive)

    def _answered(self, request: Request, response: Response | StreamResponse) -> None:
        transport = self.transport
        if transport is None:
            return
        # Unless the whole body was read, its rest would be taken for the next request: close.
        closing = (self._closing or response.close or not request.keep_alive or not request._done
                   or request._error is not None or self.server.shutting_down)
        if isinstance(response, StreamResponse):
            if not response.prepared:  # a stream that never started: cannot be answered well
                transport.close()
                return
            if not response._eof and not transport.is_closing():
                transport.write(response.end())
        elif not transport.is_closing():
            data = response.encode(closing)
            request.answered = True
            transport.write(data)
        if closing:
            if request._done and not self._closing:
                self._closing = True
                transport.close()  # nothing unread: the answer is flushed, then the socket closed
            else:
                self._linger()


class HTTPServer:
    """A protocol factory for ``loop.create_server`` (and aiohttp's sites, through :class:`ServerRunner`)."""

    def __init__(self, handler: Handler, *, max_body: int, head_timeout: float = 30.0, keepalive: float = KEEPALIVE,
                 internal_error: Callable[[], Response] | None = None) -> None:
        self.handler = handler
        self.max_body = max_body
        self.head_timeout = head_timeout
        self.keepalive = keepalive
        self.internal_error = internal_error or (lambda: Response(b"internal error\n", 500))
        self.connections: set[_Connection] = set()
        self.shutting_down = False
        self.loop: Any = None  # the running loop, from the first connection on
        self._sweeper: asyncio.TimerHandle | None = None

    def __call__(self) -> _Connection:
        return _Connection(self)

    def opened(self, conn: _Connection) -> None:
        self.connections.add(conn)
        if self._sweeper is None:
            self.loop = asyncio.get_running_loop()
            self._sweeper = self.loop.call_later(SWEEP, self._sweep)

    def _sweep(self) -> None:
        """Time out what is due: heads not received in time, idle keep-alive connections, lingering closes."""
        now = self.loop.time()
        for conn in [c for c in self.connections if 0.0 < c.deadline <= now]:
            conn._timed_out()
        self._sweeper = self.loop.call_later(SWEEP, self._sweep) if self.connections else None

    # aiohttp's runner calls these when it stops (web_runner.BaseRunner.cleanup)
    def pre_shutdown(self) -> None:
        self.shutting_down = True

    async def shutdown(self, timeout: float | None = None) -> None:
        """Close idle connections now; give in-flight answers ``timeout`` seconds, then cancel them."""
        self.shutting_down = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.connections):
            if conn._task is None and conn.transport is not None:
                conn.transport.close()
        tasks = [c._task for c in self.connections if c._task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for conn in list(self.connections):
            if conn._task is not None:
                conn._task.cancel()
            if conn.transport is not None:
                conn.transport.close()
