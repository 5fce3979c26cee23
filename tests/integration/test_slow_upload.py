"""Slow uploads against a running router: a client that sends its headers and then trickles the body gets an
OpenAI-style JSON 408 once the read deadline passes, instead of holding a handler for as long as it likes;
other clients are served meanwhile, and an upload that is slow but in time is served.

The deadline is ``--request-read-timeout`` (default 30 s; 1.5 s here, so the test does not wait 30 s).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from .harness import Proc, Processes, plan, write_plan

pytestmark = pytest.mark.timeout(60)

READ_TIMEOUT = 1.5
NORMAL = {"model": "support", "messages": [{"role": "user", "content": "Where is my parcel?"}]}
@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """One router for the module's tests (each test opens its own connections)."""
    procs = Processes(tmp_path_factory.mktemp("slow-upload"))
    try:
        stable = procs.standin("model-a")
        path = procs.logs / "plan.json"
        write_plan(path, plan(stable, None, shadowPercent=0))
        yield procs.router(path, "--request-read-timeout", str(READ_TIMEOUT))
    finally:
        procs.stop_all()


def open_upload(router: Proc, length: int, first: bytes, key: str | None = None) -> socket.socket:
    """A connection that has sent the headers of a POST of ``length`` bytes, and ``first`` of them."""
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=20)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key or router.key}\r\nContent-Length: {length}\r\n\r\n"
    )
    sock.sendall(head.encode() + first)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 answer with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed with no answer after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, "closed in the middle of the answer"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def normal_request(router: Proc) -> int:
    body = json.dumps(NORMAL).encode()
    with open_upload(router, len(body), body) as sock:
        return read_answer(sock)[0]


def trickle(sock: socket.socket, data: bytes, every: float, stop: threading.Event) -> None:
    """Send ``data`` one byte every ``every`` seconds until it is sent, ``stop`` is set or the peer is gone."""
    for byte in data:
        if stop.wait(every):
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return


def test_a_trickled_body_gets_a_json_408_at_the_deadline_and_others_are_served(router: Proc) -> None:
    body = json.dumps(NORMAL).encode() + b" " * 1000
    stop = threading.Event()
    started = time.monotonic()
    with open_upload(router, len(body), body[:10]) as sock:
        # One byte every 0.2 s: never idle for long, so only a deadline on the whole body stops it.
        sender = threading.Thread(target=trickle, args=(sock, body[10:], 0.2, stop), daemon=True)
        sender.start()
        try:
            time.sleep(0.5)
            assert normal_request(router) == 200  # meanwhile the router serves everyone else
            status, headers, data = read_answer(sock)
            waited = time.monotonic() - started
        finally:
            stop.set()
            sender.join()
    assert status == 408, data
    assert json.loads(data)["error"] == {
        "message": f"the request body was not received within {READ_TIMEOUT:g} seconds",
        "type": "invalid_request_error", "code": "request_timeout", "param": None,
    }
    assert headers.get("connection", "").lower() == "close"  # the rest of the body is never read
    assert READ_TIMEOUT - 0.1 <= waited <= READ_TIMEOUT + 3, waited
    assert router.popen.poll() is None
    assert normal_request(router) == 200


def test_a_slow_upload_that_ends_in_time_is_served(router: Proc) -> None:
    body = json.dumps(NORMAL).encode()
    third = len(body) // 3
    with open_upload(router, len(body), body[:third]) as sock:
        for part in (body[third:2 * third], body[2 * third:]):
            time.sleep(READ_TIMEOUT / 4)
            sock.sendall(part)
        status, _, data = read_answer(sock)
    assert status == 200, data


def test_a_client_without_a_key_is_refused_before_its_body_is_read(router: Proc) -> None:
    with open_upload(router, 5000, b"{", key="isk_wrong") as sock:  # the body never comes
        started = time.monotonic()
        status, _, data = read_answer(sock)
    assert status == 401 and json.loads(data)["error"]["code"] == "invalid_api_key"
    assert time.monotonic() - started < READ_TIMEOUT  # no wait for the deadline: nothing was read

