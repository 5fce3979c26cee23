"""A minimal OTLP/HTTP receiver for bench/router_overhead.py: accepts ``POST /v1/traces`` and drops it.

The bench measures what tracing costs the router (building spans, batching, encoding,
exporting), not a trace backend: this sink answers every export at once, on the load
generator's core, and counts exports and bytes (``GET /count``), so a row can say its
spans really left the router.

    python bench/otlp_sink.py --port 4318
"""

from __future__ import annotations

import argparse
import asyncio
import json


class Sink(asyncio.Protocol):
    exports = 0
    received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buf) < head_end + 4 + length:
                return
            self.buf = self.buf[head_end + 4 + length:]
            if head.startswith("GET /count"):
                body = json.dumps({"exports": Sink.exports, "bytes": Sink.received}).encode()
                kind = b"application/json"
            else:
                Sink.exports += 1
                Sink.received += length
                body, kind = b"", b"application/x-protobuf"
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nContent-Length: "  # type: ignore[attr-defined]
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    asyncio.run(main(p.parse_args().port))
