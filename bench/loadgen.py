"""A fixed-rate open-loop HTTP/1.1 load generator that reads whole (chunked SSE) answers.

Request ``i`` is due at ``start + i / rate`` whatever happened before, and its
latency is measured from that due time, not from when it was sent: a proxy that
stalls is charged for the queue it causes (no coordinated omission). Raw asyncio
protocol on uvloop, one request at a time per keep-alive connection, a new
connection whenever none is idle, so the generator costs a few microseconds per
read and never becomes the bottleneck it is measuring.

Every answer is read to its end; a stream counts as an error unless it carries
exactly the expected number of SSE events (which also catches a proxy that
drops or adds one).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Target:
    host: str
    port: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)  # seconds from due time to the answer's last byte
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0
    # user id -> {(target index, revision header)}, to check stickiness across router replicas
    revisions: dict[str, set[tuple[int, str]]] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return len(self.latencies)


class _Conn(asyncio.Protocol):
    """One keep-alive connection; parses one response at a time (status, headers, length or chunked body)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.future: asyncio.Future[tuple[int, str, int]] | None = None
        self.reusable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.reusable = False
        if self.future is not None and not self.future.done():
            self.future.set_exception(ConnectionError("connection lost"))

    def send(self, data: bytes) -> asyncio.Future[tuple[int, str, int]]:
        assert self.transport is not None
        self.buf = bytearray()
        self.head: bytes | None = None
        self.status = 0
        self.revision = ""
        self.length = -1  # content-length; -1: chunked
        self.payload = bytearray()
        self.future = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.future

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head = bytes(self.buf[:end]).lower()
            del self.buf[:end + 4]
            self.status = int(self.head[9:12])
            for line in self.head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name == b"content-length":
                    self.length = int(value)
                elif name == b"x-inferstack-revision":
                    self.revision = value.strip().decode()
                elif name == b"connection" and b"close" in value:
                    self.reusable = False
        if self.length >= 0:
            if len(self.buf) >= self.length:
                self._finish(1)
            return
        # Chunked: take whole chunks off the front; the payload is kept to count its events at the end.
        while True:
            eol = self.buf.find(b"\r\n")
            if eol < 0:
                return
            size = int(self.buf[:eol].split(b";", 1)[0], 16)
            if size == 0:
                if len(self.buf) >= eol + 4:  # "0\r\n\r\n": no trailers from any of the servers
                    self._finish(self.payload.count(b"data:"))
                return
            if len(self.buf) < eol + 2 + size + 2:
                return
            self.payload += self.buf[eol + 2:eol + 2 + size]
            del self.buf[:eol + 2 + size + 2]

    def _finish(self, events: int) -> None:
        assert self.future is not None
        if not self.future.done():
            self.future.set_result((self.status, self.revision, events))


async def fixed_rate(
    targets: list[Target], body: bytes | list[bytes], rate: float, duration: float, *, events: int, users: int = 1000,
    timeout: float = 15.0, path: str = "/v1/chat/completions",
) -> Outcome:
    """``rate * duration`` requests, round-robin over ``targets``, user ``i % users`` in ``x-user-id``.

    ``body``: one for every request, or a list: user ``u`` sends ``body[u % len(body)]`` (e.g. distinct questions).
    ``events``: the SSE events a correct answer carries (1 for a non-streamed answer).
    """
    bodies = body if isinstance(body, list) else [body]
    loop = asyncio.get_running_loop()
    out = Outcome()
    idle: list[list[_Conn]] = [[] for _ in targets]
    # Every request's bytes are built before the clock starts: none is built on the measured path.
    requests = [
        [
            (f"POST {path} HTTP/1.1\r\nHost: {t.host}:{t.port}\r\nContent-Type: application/json\r\n"
             f"Content-Length: {len(b)}\r\nx-user-id: user-{u}\r\n"
             + "".join(f"{k}: {v}\r\n" for k, v in t.headers.items()) + "\r\n").encode() + b
            for u, b in ((u, bodies[u % len(bodies)]) for u in range(users))
        ]
        for t in targets
    ]

    async def fire(i: int, due: float) -> None:
        which, user = i % len(targets), (i // len(targets)) % users
        pool = idle[which]
        conn: _Conn | None = None
        try:
            if pool:
                conn = pool.pop()
            else:
                _, conn = await loop.create_connection(_Conn, targets[which].host, targets[which].port)
            status, revision, seen = await asyncio.wait_for(conn.send(requests[which][user]), timeout)
        except TimeoutError:
            out.errors["timeout"] += 1
            if conn is not None and conn.transport is not None:
                conn.transport.close()
            return
        except OSError:
            out.errors["connection"] += 1
            return
        finished = time.perf_counter()
        if conn.reusable and conn.transport is not None:
            pool.append(conn)
        elif conn.transport is not None:
            conn.transport.close()
        if status != 200:
            out.errors[f"http_{status}"] += 1
        elif seen != events:
            out.errors["events"] += 1
        else:
            out.latencies.append(finished - due)
            if revision:
                out.revisions.setdefault(f"user-{user}", set()).add((which, revision))

    tasks = []
    total = int(rate * duration)
    start = time.perf_counter()
    i = 0
    while i < total:
        now = time.perf_counter()
        # Everything due by now is sent now; what is late is charged from its due time.
        while i < total and start + i / rate <= now:
            tasks.append(loop.create_task(fire(i, start + i / rate)))
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
    await asyncio.gather(*tasks)
    out.elapsed = time.perf_counter() - start
    for pool in idle:
        for conn in pool:
            if conn.transport is not None:
                conn.transport.close()
    return out
