"""A minimal OpenAI-shaped backend for the router bench, cheap enough never to be the bottleneck.

Raw asyncio protocol on uvloop, HTTP/1.1 keep-alive, no framework: it shares
core 0 with the load generator while the proxies under test get core 1, so
every microsecond it spends is one the load generator does not get.

* ``max_tokens`` of the request is the number of content events (default 32);
* a ``model`` starting with ``paced`` sends one event every ``--pace-ms``
  (one write per event, as a model server does); any other model gets the
  whole stream in one write (the proxy then reads many events per read);
* ``stream_options.include_usage`` adds the usage-only chunk before ``[DONE]``,
  as vLLM and OpenAI do; a non-streamed answer always carries usage.

Each ``--port`` is one revision; the answers name the port's ``--names`` entry
in the ``x-bench-backend`` header so the bench can check who answered.

    python bench/fast_backend.py --ports 8001,8002 --names stable,candidate --pace-ms 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re

import uvloop

_LENGTH = re.compile(rb"content-length:\s*(\d+)")

# A support answer long enough for the rule checks to have something to match (mustMatch "refund policy").
ANSWER = "Open Orders and press Track to see where your parcel is; our refund policy gives you thirty days to send it back."
WORDS = ANSWER.split(" ")


def token(i: int) -> str:
    return " " + WORDS[i % len(WORDS)]


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(obj: dict) -> bytes:
    return _chunk(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")


def stream_events(model: str, n: int, usage: bool) -> list[bytes]:
    """The HTTP chunks of one chat stream, vLLM's shape: role, n content deltas, finish, [usage], [DONE]."""
    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": model}

    def ev(choices: list, **extra: object) -> bytes:
        return _event({**head, "choices": choices, **extra})

    out = [ev([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])]
    out += [ev([{"index": 0, "delta": {"content": token(i)}, "logprobs": None, "finish_reason": None}]) for i in range(n)]
    out.append(ev([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]))
    if usage:
        out.append(ev([], usage={"prompt_tokens": 20, "completion_tokens": n, "total_tokens": 20 + n}))
    out.append(_chunk(b"data: [DONE]\n\n"))
    out.append(b"0\r\n\r\n")
    return out


def whole_answer(model: str, n: int) -> bytes:
    text = "".join(token(i) for i in range(n)).lstrip()
    return json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": n, "total_tokens": 20 + n},
    }, separators=(",", ":")).encode()


class Backend(asyncio.Protocol):
    cache: dict[tuple, object] = {}  # shared: answers are built once per (model, n, stream, usage)

    def __init__(self, name: str, pace: float) -> None:
        self.name = name.encode()
        self.pace = pace
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a paced stream is being written; later requests wait in buf

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._serve()

    def _serve(self) -> None:
        while self.transport is not None and not self.busy:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            match = _LENGTH.search(head)
            length = int(match.group(1)) if match else 0
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4:end + 4 + length])
            del self.buf[:end + 4 + length]
            if head.startswith(b"get"):
                self._send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                continue
            self._answer(json.loads(body))

    def _send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def _answer(self, req: dict) -> None:
        model, n = str(req.get("model", "")), int(req.get("max_tokens") or 32)
        stream = bool(req.get("stream"))
        usage = bool((req.get("stream_options") or {}).get("include_usage"))
        key = (model, n, stream, usage)
        built = self.cache.get(key)
        if built is None:
            built = self.cache[key] = stream_events(model, n, usage) if stream else whole_answer(model, n)
        if not stream:
            assert isinstance(built, bytes)
            self._send(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-bench-backend: %s\r\n"
                       b"content-length: %d\r\n\r\n%s" % (self.name, len(built), built))
            return
        assert isinstance(built, list)
        head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                b"x-bench-backend: %s\r\ntransfer-encoding: chunked\r\n\r\n" % self.name)
        if not model.startswith("paced") or self.pace <= 0:
            self._send(head + b"".join(built))
            return
        # One write per event, pace apart; keep-alive requests behind it wait until it ends.
        self.busy = True
        self._send(head + built[0])
        loop = asyncio.get_running_loop()
        # The [DONE] event and the terminating chunk go in the last event's write.
        events = iter([*built[1:-3], b"".join(built[-3:])])

        def next_event() -> None:
            if self.transport is None:
                return
            event = next(events, None)
            if event is None:
                self.busy = False
                self._serve()
                return
            self._send(event)
            loop.call_later(self.pace, next_event)

        loop.call_later(self.pace, next_event)


async def serve(ports: list[int], names: list[str], pace: float) -> None:
    loop = asyncio.get_running_loop()
    for port, name in zip(ports, names, strict=True):
        await loop.create_server(lambda name=name: Backend(name, pace), "127.0.0.1", port, backlog=4096)
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ports", required=True, help="Comma-separated ports, one per revision.")
    p.add_argument("--names", required=True, help="Comma-separated names of the ports (x-bench-backend).")
    p.add_argument("--pace-ms", type=float, default=2.0, help="Gap between events of a paced stream.")
    args = p.parse_args()
    uvloop.run(serve([int(x) for x in args.ports.split(",")], args.names.split(","), args.pace_ms / 1000))


if __name__ == "__main__":
    main()
